"""Data servers for tests and benchmarks: a local S3 server and a local HTTP file server.

* `S3Server`: `moto_server` (the S3-compatible server of the `moto` package) in a subprocess on
  127.0.0.1 that checks request signatures: it creates one IAM user with an access key pair and
  refuses any other key. It writes the credentials file that workers read
  (LOMAS_S3_CREDENTIALS_FILE).
* `HttpFileServer`: `http.server` serving a directory from a thread, counting the requests it gets
  (so tests can prove that nothing was read).

Nothing here reaches beyond the loopback interface. This module does not import pytest.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """A local S3-compatible server (moto) that accepts one access key pair, made at start."""

    # moto serves this many requests without authentication: the three IAM calls of `start`.
    _SETUP_REQUESTS = 3

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.access_key_id = ""
        self.secret_access_key = ""

    def start(self, timeout: float = 30.0) -> S3Server:
        binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
            "moto_server"
        )
        if binary is None:
            raise RuntimeError("moto_server is not installed (pip install 'moto[s3]' flask)")
        log = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        env = {
            **os.environ,
            "MOTO_ALLOW_NONEXISTENT_REGION": "true",
            "INITIAL_NO_AUTH_ACTION_COUNT": str(self._SETUP_REQUESTS),
        }
        self._process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        if self._log_path and not isinstance(log, int):
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        try:
            self._make_user()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_user(self) -> None:
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",  # noqa: S106 - moto ignores it for the setup calls
            region_name="us-east-1",
        )
        iam.create_user(UserName="lomas")
        key = iam.create_access_key(UserName="lomas")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="lomas", PolicyName="s3", PolicyDocument=json.dumps(policy))
        self.access_key_id = key["AccessKeyId"]
        self.secret_access_key = key["SecretAccessKey"]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
        )

    def put(self, bucket: str, key: str, body: bytes) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        client.put_object(Bucket=bucket, Key=key, Body=body)

    def write_credentials_file(self, path: Path, name: str) -> Path:
        """A LOMAS_S3_CREDENTIALS_FILE naming this server's key pair `name` (JSON, mode 0600)."""
        path.write_text(
            json.dumps(
                {
                    name: {
                        "access_key_id": self.access_key_id,
                        "secret_access_key": self.secret_access_key,
                        "region": "us-east-1",
                    }
                }
            )
        )
        path.chmod(0o600)
        return path


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    counter: dict[str, int]
    lock: threading.Lock

    def do_GET(self) -> None:
        with self.lock:
            self.counter[self.path] = self.counter.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpFileServer:
    """Serves `root` on 127.0.0.1 from a thread; `requests` counts GETs by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: dict[str, int] = {}
        handler = type(
            "Handler", (_CountingHandler,), {"counter": self.requests, "lock": threading.Lock()}
        )
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
        )
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HttpFileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HttpFileServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def count(self, name: str) -> int:
        return self.requests.get(f"/{name}", 0)
