"""`lomas-mesh run`: the embedded default. Every service, a light and a heavy Celery worker and a
private Redis on this machine, SQLite stores in a data directory, a development issuer, demo
content, and the web dashboard (http://127.0.0.1:8080/ unless --dashboard-port says otherwise; 0
for none). Ctrl-C stops it.

`lomas-mesh token USER`: a token for USER signed by the development issuer of a data directory, for
users an administrator adds (`lomas-admin users add`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from lomas_embedded import demo
from lomas_embedded.dashboard import Dashboard, start_dashboard
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.local import local_mesh

EXAMPLE = """\
from lomas.client import Client
client = Client("{target}", "PENGUIN", token="{token}")
print(client.get_remaining_budget())
print(client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=1e-5))
print(client.get_remaining_budget())"""


# What the launcher itself decides for every service: where the others are, the shared secret, the
# private Redis and its prefix. Every other LOMAS_ setting in the launcher's environment is passed
# on to the services (limits, worker concurrency, time limits...), so an operator can tune the
# embedded mesh as the documented settings say.
_LAUNCHER_OWNED = frozenset(
    {
        "LOMAS_SERVICE_TOKEN",
        "LOMAS_REDIS_URL",
        "LOMAS_QUEUE_PREFIX",
        "LOMAS_ADMIN_TARGET",
        "LOMAS_BUDGET_TARGET",
        "LOMAS_EXECUTOR_TARGET",
        "LOMAS_LISTEN",
        "LOMAS_DATABASE_URL",
        "LOMAS_JWKS",
        "LOMAS_JWT_ISSUER",
        "LOMAS_JWT_AUDIENCE",
        "LOMAS_BOOTSTRAP_ADMIN",
    }
)


def operator_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The LOMAS_ settings of the launcher's environment that the services should see."""
    return {
        key: value
        for key, value in environ.items()
        if key.startswith("LOMAS_") and key not in _LAUNCHER_OWNED
    }


def run(data_dir: Path, port: int, dashboard_port: int = 0) -> None:
    # The launcher's own log: restarts of services that died (each service logs to data/logs/).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    data_dir = data_dir.resolve()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = operator_settings(os.environ)
    # The mesh sets each worker's concurrency itself: an operator's value goes through its config.
    concurrency = int(settings.pop("LOMAS_WORKER_CONCURRENCY", "2"))
    with local_mesh(
        data_dir,
        gateway_listen=f"127.0.0.1:{port}",
        extra_env=settings,
        worker_concurrency=concurrency,
        # DiffPrivLib and SmartNoise-Synth queries run on the heavy queue: one worker serves it.
        heavy_worker_count=1,
    ) as running:
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
        dashboard = (
            start_dashboard(running.target, dashboard_port, running.mesh.logs / "dashboard.log")
            if dashboard_port
            else None
        )
        try:
            if isinstance(dashboard, Dashboard):
                print(f"\nDashboard: {dashboard.url} (sign in with a token above)")
            elif dashboard is not None:
                print(f"\nDashboard not started: {dashboard}")
            print("\nTry it from Python:\n")
            print(EXAMPLE.format(target=running.target, token=researcher_token))
            print("\nPress Ctrl-C to stop.", flush=True)
            stop.wait()
            print("\nStopping...", flush=True)
        finally:
            if isinstance(dashboard, Dashboard):
                dashboard.stop()
    print("Stopped.", flush=True)


ISSUE_TOKENS_HELP = """\
Print a token for USER, signed by the development issuer of the data directory (the first
`lomas-mesh run` makes it). The token only says who its bearer is: whether USER exists, may query
or is an admin, the admin store decides at every call (`lomas-admin users add USER [--admin]`,
`lomas-admin grants add USER DATASET ...`). So the platform need not be running, a token may be made
before its user is added, and the platform refuses a user it does not know."""


def token(user: str, data_dir: Path, ttl_days: float) -> int:
    """Print a token for `user` (see ISSUE_TOKENS_HELP); exit status 1 when `data_dir` has no issuer yet."""
    issuer_dir = data_dir / "issuer"  # where `local_mesh` keeps it
    if not (issuer_dir / "dev-issuer-key.pem").exists():
        print(
            f"lomas-mesh: {data_dir} has no development issuer yet: start the platform once with "
            f"`lomas-mesh run --data-dir {data_dir}`",
            file=sys.stderr,
        )
        return 1
    issuer = DevIssuer.load_or_create(issuer_dir)
    print(issuer.token(user, ttl_seconds=round(ttl_days * 24 * 3600)))
    return 0


def positive_days(text: str) -> float:
    days = float(text)
    if not days > 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be a positive number of days")
    return days


def main() -> None:
    parser = argparse.ArgumentParser(prog="lomas-mesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the embedded default")
    run_parser.add_argument("--data-dir", type=Path, default=Path("data"))
    run_parser.add_argument("--port", type=int, default=50051)
    run_parser.add_argument(
        "--dashboard-port",
        type=int,
        default=8080,
        help="serve the web dashboard on 127.0.0.1 at this port (default 8080; 0: no dashboard)",
    )
    token_parser = commands.add_parser(
        "token",
        help="print a token for a user (signed by the data directory's development issuer)",
        description=ISSUE_TOKENS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token_parser.add_argument("user", help="the user's name, as `lomas-admin users add` gave it")
    token_parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="the one `lomas-mesh run` uses"
    )
    token_parser.add_argument(
        "--ttl-days", type=positive_days, default=30.0, help="how long the token is valid"
    )
    args = parser.parse_args()
    if args.command == "token" and not args.user.strip():
        token_parser.error("the user's name is empty")
    if args.command == "run":
        run(args.data_dir, args.port, args.dashboard_port)
    elif args.command == "token":
        sys.exit(token(args.user, args.data_dir, args.ttl_days))


if __name__ == "__main__":
    main()
