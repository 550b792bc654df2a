"""The web dashboard of the embedded default: `lomas-mesh run` starts it beside the mesh, as its own
process (`python -m lomas_dashboard.main`), in front of the gateway like any other client.

It is a convenience: when it cannot start (the package is not installed, the port is taken) the
mesh runs on without it and the launcher says why.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_SECONDS = 20.0


@dataclass
class Dashboard:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_dashboard(gateway_target: str, port: int, log_path: Path) -> Dashboard | str:
    """The running dashboard on 127.0.0.1:`port`, or why it is not running."""
    if importlib.util.find_spec("lomas_dashboard") is None:
        return "the lomas-dashboard package is not installed (scripts/setup.sh installs it)"
    if not _port_free(port):
        # Checked first so that another server answering on the port is not taken for ours.
        return f"port {port} is in use (choose another with --dashboard-port)"
    url = f"http://127.0.0.1:{port}/"
    argv = [sys.executable, "-m", "lomas_dashboard.main", "--target", gateway_target]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*argv, "--listen", f"127.0.0.1:{port}"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops it
        )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited at start (see {log_path})"
        if _healthy(url):
            return Dashboard(process, url)
        time.sleep(0.2)
    Dashboard(process, url).stop()
    return f"it did not answer within {READY_TIMEOUT_SECONDS:.0f} s (see {log_path})"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as the dashboard's server does
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}healthz", timeout=1.0) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
