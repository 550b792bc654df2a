"""Every reason the platform can emit is declared in `lomas.common.v1.ErrorReason`, and the README
lists them all: checked on the classes, on every reason literal in the source, and at run time."""

from __future__ import annotations

import gc
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lomas.common.v1 import error_reason_pb2
from lomas_common import errors
from lomas_common.errors import REASONS, LomasError, UnregisteredReason, reason_of

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [ROOT / "services", ROOT / "clients" / "python" / "lomas" / "client"]
PACKAGES = [
    "lomas_common",
    "lomas_admin",
    "lomas_budget",
    "lomas_executor",
    "lomas_gateway",
    "lomas_embedded",
    "lomas.client",
]
# `reason="X"`, `reason = "X"`, `reason: str = "X"`, and constants that name a reason.
_REASON_LITERAL = re.compile(r"""(?<!, )\breason\s*(?::\s*str\s*)?=\s*["']([A-Z][A-Z0-9_]*)["']""")
_CONSTANT = re.compile(r"""^([A-Z][A-Z0-9_]*)\s*=\s*["']([A-Z][A-Z0-9_]*)["']""", re.MULTILINE)
_REASON_NAME = re.compile(r"""\breason\s*(?::\s*str\s*)?=\s*([A-Z][A-Z0-9_]*)\b""")


def _sources() -> list[Path]:
    return [
        path
        for root in SOURCES
        for path in root.rglob("*.py")
        if "_pb2" not in path.name and "tests" not in path.parts
    ]


def test_the_registry_has_no_gaps_and_a_zero_value() -> None:
    values = error_reason_pb2.ErrorReason.values()
    assert sorted(values) == list(range(len(values)))
    assert error_reason_pb2.ERROR_REASON_UNSPECIFIED == 0
    assert (
        error_reason_pb2.ErrorReason.Name(error_reason_pb2.ERROR_REASON_UNSPECIFIED)
        == "ERROR_REASON_UNSPECIFIED"
    )
    assert reason_of(error_reason_pb2.ERROR_REASON_QUERY_INVALID) == "QUERY_INVALID"


def test_every_error_class_declares_a_registered_reason() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if ".tests" not in module.name and not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    seen = 0
    stack: list[type[LomasError]] = [LomasError]
    while stack:
        cls = stack.pop()
        seen += 1
        assert cls.reason in REASONS, f"{cls.__module__}.{cls.__qualname__}: {cls.reason}"
        stack.extend(cls.__subclasses__())
    assert seen > 20


def test_every_reason_literal_in_the_source_is_registered() -> None:
    found: dict[str, str] = {}
    for path in _sources():
        text = path.read_text()
        constants = dict(_CONSTANT.findall(text))
        for literal in _REASON_LITERAL.findall(text):
            found[literal] = str(path)
        for name in _REASON_NAME.findall(text):
            if name in constants:
                found[constants[name]] = str(path)
    assert len(found) > 30  # the scan does find the raise sites
    unregistered = {reason: where for reason, where in found.items() if reason not in REASONS}
    assert not unregistered, f"reasons missing from lomas.common.v1.ErrorReason: {unregistered}"


def test_no_reason_is_built_at_run_time() -> None:
    """A reason made by formatting (`reason=f"{what}_INVALID"`) escapes the scan above."""
    # Keyword arguments only (`reason=`, no spaces, as formatted): `reason = ...` is a variable.
    built = re.compile(r"""\breason=(f["']|[^"'\s,)]+\s*\+|["'][^"']*["']\s*\.format)""")
    offenders = [str(path) for path in _sources() if built.search(path.read_text())]
    assert offenders == []


def test_an_unregistered_reason_cannot_be_raised() -> None:
    with pytest.raises(UnregisteredReason):
        LomasError("x", reason="NOT_IN_THE_REGISTRY")
    with pytest.raises(UnregisteredReason):
        errors.InvalidArgument("x", reason="QUERY_INVALID ")


def test_an_error_class_with_an_unregistered_reason_fails_at_import() -> None:
    with pytest.raises(UnregisteredReason) as misspelled:

        class Misspelled(LomasError, code=errors.Code.NOT_FOUND, reason="USER_NOT_FOUNDD"):
            pass

    with pytest.raises(UnregisteredReason) as undeclared:

        class Undeclared(errors.NotFound):
            reason = "NOT_IN_THE_REGISTRY"

    # A failed class stays among its base's subclasses while anything refers to it: let it go, so
    # the walk over every error class (above) never meets it, whatever the test order.
    del misspelled, undeclared
    gc.collect()
    assert all(cls.reason in REASONS for cls in errors.NotFound.__subclasses__())


def test_an_error_class_keeps_its_base_code_unless_it_names_another() -> None:
    assert errors.InvalidQuery.code is errors.Code.INVALID_ARGUMENT
    assert errors.InvalidQuery("x").reason == "QUERY_INVALID"
    assert errors.DatasetAccessDenied.code is errors.Code.PERMISSION_DENIED
    assert errors.Code.NOT_FOUND.value == "NOT_FOUND"  # the gRPC name (rpc_errors maps it)


def test_the_readme_lists_every_reason_as_the_registry_says() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(reason for reason in REASONS if f"`{reason}`" not in readme)
    assert not missing, f"README.md does not list: {missing}"
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "error_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert table in readme, "README's error table is stale: run scripts/error_table.py"


def test_every_backend_outage_names_its_peer() -> None:
    """`peer` is a required keyword, so mypy --strict finds a raise site without one; a caller
    that escapes the type checker fails at once."""
    down = errors.BackendUnavailable("the queue is unavailable", peer="redis")
    assert down.metadata == {"peer": "redis"}
    unchecked: Any = errors.BackendUnavailable
    with pytest.raises(TypeError):
        unchecked("no peer named")
