"""Put the googleapis contracts our protos import into build/googleapis (for buf and protoc).

Our protos import `google/api/field_behavior.proto` (and clients need `google/rpc/status.proto` and
`error_details.proto` to decode every error). They come from the pinned `googleapis-common-protos`
package (its wheel ships the .proto sources beside the generated modules), not from a registry, so
the build works offline and uses exactly the version the Python runtime imports.

    .venv/bin/python scripts/googleapis.py [DEST]   (default: build/googleapis)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.api
import google.rpc

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    google.api: ("field_behavior.proto",),
    google.rpc: ("status.proto", "error_details.proto", "code.proto"),
}


def main(dest: Path) -> int:
    for package, names in FILES.items():
        source_dir = Path(next(iter(package.__path__)))
        target_dir = dest / Path(*package.__name__.split("."))
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            source = source_dir / name
            if not source.is_file():
                print(
                    f"{source} is missing: is googleapis-common-protos installed?", file=sys.stderr
                )
                return 1
            shutil.copyfile(source, target_dir / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "googleapis")
    )
