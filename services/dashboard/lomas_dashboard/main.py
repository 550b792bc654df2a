"""`python -m lomas_dashboard.main --target HOST:PORT --listen 127.0.0.1:8080` (or `lomas-dashboard`):
serve the dashboard until SIGTERM or Ctrl-C.

The server is Werkzeug's threaded one, meant for a dashboard on loopback or behind a proxy that
terminates TLS; `lomas_dashboard.app:create_app` is an ordinary WSGI application for any other
server.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from werkzeug.serving import make_server

from lomas_dashboard.app import create_app
from lomas_dashboard.settings import parse


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv, os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(settings)
    try:
        server = make_server(settings.listen_host, settings.listen_port, app, threaded=True)
    except OSError as error:
        print(
            f"lomas-dashboard: cannot listen on {settings.listen_host}:{settings.listen_port}: {error.strerror}",
            file=sys.stderr,
        )
        sys.exit(1)
    # Port 0 asks for a free port: say which one was taken.
    url = f"http://{settings.listen_host}:{server.server_port}/"
    print(f"Lomas dashboard on {url} (gateway {settings.target})", flush=True)
    # SIGTERM (how the embedded launcher stops it) ends the loop like Ctrl-C, without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
