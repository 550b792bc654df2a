"""Test support for the Lomas mesh (never deployed): real databases and data servers, no mocks.

* `lomas_testing.databases`: a fresh PostgreSQL database per test, SQLite URLs.
* `lomas_testing.data_servers`: a local S3-compatible server (moto) and a local HTTP file server.
* `lomas_testing.redis_keys`: queue settings under a scratch prefix of the machine's Redis.

Nothing here imports pytest; each service's `tests/conftest.py` builds its fixtures from these.
"""
