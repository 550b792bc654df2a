"""Regenerate the Python code and typed stubs of protos/ into clients/python (checked in).

Run from the repository root with the project's virtualenv: `.venv/bin/python scripts/gen_protos.py`.
CI runs it and fails if the checked-in files change.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import googleapis
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python"
VENV_BIN = Path(sys.executable).parent
GOOGLEAPIS = ROOT / "build" / "googleapis"


def main() -> int:
    domains = sorted(p.name for p in (PROTOS / "lomas").iterdir() if p.is_dir())
    for domain in domains:
        shutil.rmtree(OUT / "lomas" / domain, ignore_errors=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # google/api and google/rpc are imported, not generated: their Python modules come from the
    # googleapis-common-protos package at run time.
    if googleapis.main(GOOGLEAPIS) != 0:
        return 1
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--proto_path={GOOGLEAPIS}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={VENV_BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={VENV_BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    if protoc.main(args) != 0:
        return 1
    for domain in domains:
        for package in (OUT / "lomas" / domain, OUT / "lomas" / domain / "v1"):
            (package / "__init__.py").write_text("")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
