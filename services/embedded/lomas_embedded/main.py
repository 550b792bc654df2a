"""`lomas-mesh run`: the embedded default. Every service, one Celery worker and a private Redis on this
machine, SQLite stores in a data directory, a development issuer, and demo content. Ctrl-C stops it."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from lomas_embedded import demo
from lomas_embedded.local import local_mesh

EXAMPLE = """\
from lomas.client import Client
client = Client("{target}", token="{token}", dataset="PENGUIN")
print(client.get_remaining_budget())
print(client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=1e-5))
print(client.get_remaining_budget())"""


def run(data_dir: Path, port: int) -> None:
    # The launcher's own log: restarts of services that died (each service logs to data/logs/).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    data_dir = data_dir.resolve()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with local_mesh(data_dir, gateway_listen=f"127.0.0.1:{port}") as running:
        admin_token = running.token(demo.ADMIN)
        researcher_token = running.token(demo.RESEARCHER)
        (data_dir / "admin.token").write_text(admin_token)
        (data_dir / "researcher.token").write_text(researcher_token)
        print(f"Lomas mesh is up on {running.target} (data in {data_dir}).", flush=True)
        print(f"\nAdmin token ({demo.ADMIN}), also in {data_dir / 'admin.token'}:\n{admin_token}")
        print(
            f"\nResearcher token ({demo.RESEARCHER}), also in {data_dir / 'researcher.token'}:"
            f"\n{researcher_token}"
        )
        print("\nTry it from Python:\n")
        print(EXAMPLE.format(target=running.target, token=researcher_token))
        print("\nPress Ctrl-C to stop.", flush=True)
        stop.wait()
        print("\nStopping...", flush=True)
    print("Stopped.", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="lomas-mesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the embedded default")
    run_parser.add_argument("--data-dir", type=Path, default=Path("data"))
    run_parser.add_argument("--port", type=int, default=50051)
    args = parser.parse_args()
    if args.command == "run":
        run(args.data_dir, args.port)


if __name__ == "__main__":
    main()
