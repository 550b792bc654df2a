"""Test support for the Lomas mesh (never deployed): real databases and data servers, no mocks.

* `lomas_testing.databases`: a fresh PostgreSQL database per test, SQLite URLs.
* `lomas_testing.data_servers`: a local S3-compatible server (moto) and a local HTTP file server.

Nothing here imports pytest; each service's `tests/conftest.py` builds its fixtures from these.
"""
