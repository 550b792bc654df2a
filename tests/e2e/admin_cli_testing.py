"""Running `lomas-admin` in tests: in this process (`main(argv)`, the code the console script
runs), capturing what it prints, or as the installed console script."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lomas.admin_cli import main as lomas_admin
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh


@dataclass(frozen=True)
class Ran:
    """A finished command: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(*argv: str) -> Ran:
    """`lomas-admin ARGV` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = lomas_admin(list(argv))
    return Ran(code, out.getvalue(), err.getvalue())


def cli(platform: LocalMesh, *args: str) -> Ran:
    """`lomas-admin --target ... --token ... ARGS` as the platform's administrator."""
    return run("--target", platform.target, "--token", platform.token(demo.ADMIN), *args)


def ok(platform: LocalMesh, *args: str) -> Ran:
    """A command that must succeed, printing nothing on stderr."""
    ran = cli(platform, *args)
    assert (ran.code, ran.err) == (0, ""), ran
    return ran


def console_script(name: str = "lomas-admin") -> str:
    """The installed console script (`lomas-admin`, `lomas-mesh`) beside this Python."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is installed with its package"
    return found
