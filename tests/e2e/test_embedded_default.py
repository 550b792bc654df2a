"""The README's run command: `lomas-mesh run` comes up with no system services, its printed Python
example returns a DP count from PENGUIN, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from lomas_embedded.ports import free_port

VENV_BIN = Path(sys.executable).parent


def test_run_command_serves_the_printed_example_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOMAS_")}
    # An operator's setting reaches the services; what the launcher owns does not move.
    launcher_env = env | {"LOMAS_MAX_DUMMY_ROWS": "7", "LOMAS_SERVICE_TOKEN": "ignored"}
    launcher = subprocess.Popen(
        [
            str(VENV_BIN / "lomas-mesh"),
            "run",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--dashboard-port",
            str(dashboard_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=launcher_env,
    )
    assert launcher.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while not any("Press Ctrl-C to stop." in line for line in output):
            assert launcher.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "".join(output)
            output.append(launcher.stdout.readline())
        printed = "".join(output)
        example = printed.split("Try it from Python:\n", 1)[1].split("\nPress Ctrl-C", 1)[0].strip()
        assert example.count("\n") == 4, example  # the five-line example

        result = subprocess.run(
            [sys.executable, "-c", example], capture_output=True, text=True, timeout=120, env=env
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert "remaining_epsilon" in lines[0]
        count = re.search(r"^\s*0\s+(\d+)\s*$", result.stdout, re.MULTILINE)
        assert count is not None, result.stdout  # a one-row frame with the DP count
        assert 200 <= int(count.group(1)) <= 500  # 344 rows plus Laplace noise at epsilon 1
        assert (tmp_path / "data" / "researcher.token").read_text() in printed
        assert f"Dashboard: http://127.0.0.1:{dashboard_port}/" in printed

        dummy = [
            *example.split("\n", 2)[:2],
            "from lomas.client import InvalidArgument",
            "print(len(client.get_dummy_dataset(nb_rows=7)))",
            "try:\n    client.get_dummy_dataset(nb_rows=8)\nexcept InvalidArgument as e:\n"
            "    print(e.reason)",
        ]
        limited = subprocess.run(
            [sys.executable, "-c", "\n".join(dummy)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert limited.stdout.split() == ["7", "DUMMY_ROWS_OUT_OF_RANGE"], limited.stderr
    finally:
        launcher.send_signal(signal.SIGINT)
        rest, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, rest
    assert "Stopped." in rest
    # Every service process is gone: their logs end with a clean shutdown, nothing listens any more.
    for log in (tmp_path / "data" / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(), log
