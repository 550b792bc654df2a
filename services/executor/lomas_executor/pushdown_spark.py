"""Spark datasets: a folder of Parquet files, queried by Apache Spark where the files are.

A Spark dataset (`DataSource.spark`) is a folder of Parquet files. SmartNoise-SQL's rewritten
exact-aggregate subquery runs in Spark (through a `PushdownReader`, see
`lomas_executor.pushdown_sql`), only its rows come back to the worker, and the worker adds the
noise: no Spark executor ever draws noise, and no row leaves Spark.

One Spark session per worker process (`SparkSessions`), started by the first Spark query's preflight
(a JVM starts: seconds), before the query touches any data, so that a session that cannot start
fails a query that is then refunded; reused by every later query, and started again by a preflight
that finds its JVM gone (killed, out of memory). The session's master is a setting
(`SparkSettings.master`, LOMAS_SPARK_MASTER): `local[N]` runs Spark inside the worker's machine with
N threads (the default); `spark://host:7077`, `yarn` or `k8s://https://...` sends the same queries to
a cluster, whose executors then read the folder (give a path they can all read: a shared file system
or a URI such as `hdfs://` or `s3a://`). LOMAS_SPARK_CONF adds any Spark setting
(`key=value,key=value`, e.g. the cluster's credentials provider); LOMAS_SPARK_DRIVER_MEMORY sizes the
driver (the worker's own JVM).

Each dataset folder is registered once per session as a temporary view of the metadata's columns
only, named after the folder (`lomas_<digest>`); researcher SQL names the table `df`, which the
reader maps to that view. The session reads double-quoted names as identifiers
(`spark.sql.ansi.doubleQuotedIdentifiers`), as PostgreSQL and smartnoise-sql do.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from decimal import Decimal
from typing import Any

from lomas_common.errors import FailedPrecondition
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.pushdown_sql import PushdownReader
from lomas_executor.settings import SparkSettings
from lomas_executor.sources import DataSource

_log = logging.getLogger(__name__)

# Settings every Lomas Spark session has (LOMAS_SPARK_CONF may override the last two).
_FIXED_CONF = {
    "spark.sql.ansi.doubleQuotedIdentifiers": "true",
    "spark.sql.session.timeZone": "UTC",
}
_DEFAULT_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Aggregates over a few groups: a few shuffle partitions, not Spark's 200.
    "spark.sql.shuffle.partitions": "8",
}


# A failed JVM launch is tried once more, after a pause that lets a saturated machine settle.
_START_ATTEMPTS = 2
_RETRY_PAUSE_SECONDS = 2.0


class SparkSessions:
    """This process's Spark session, started on first use, and the views it has registered."""

    def __init__(self, settings: SparkSettings | None = None) -> None:
        self._settings = settings or SparkSettings()
        self._lock = threading.Lock()
        self._session: Any = None
        self._views: dict[tuple[str, tuple[str, ...]], str] = {}

    @property
    def started(self) -> bool:
        return self._session is not None

    def session(self) -> Any:
        """The SparkSession (a `pyspark.sql.SparkSession`), started once. FailedPrecondition
        (DATASET_SOURCE_UNAVAILABLE) if it cannot start (no Java, a cluster that does not answer,
        a machine too loaded for the JVM to come up in time)."""
        with self._lock:
            if self._session is None:
                self._session = self._start_with_retry()
            return self._session

    def _start_with_retry(self) -> Any:
        """Start the session, trying once more after a failed start: a JVM launched while the
        machine is saturated (other JVMs starting, every core busy) can exit before it hands
        PySpark its port, and a second launch then succeeds. A second failure is the answer."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                return self._start()
            except Exception as exc:
                _log.warning(
                    "the Spark session could not start (attempt %d of %d)",
                    attempt,
                    _START_ATTEMPTS,
                    exc_info=True,
                )
                _reset_pyspark()
                if attempt == _START_ATTEMPTS:
                    raise FailedPrecondition(
                        f"the worker's Spark session could not start ({type(exc).__name__})",
                        reason="DATASET_SOURCE_UNAVAILABLE",
                    ) from None
                time.sleep(_RETRY_PAUSE_SECONDS)
        raise AssertionError("unreachable")

    def ensure_live(self) -> None:
        """Before any data access (a worker's preflight): the session is started, and started
        again if its JVM went away (killed, out of memory) since the last query, so that neither
        failure is met after the data was touched."""
        if self._session is not None:
            try:
                stopped = bool(self._session.sparkContext._jsc.sc().isStopped())
            except Exception:
                stopped = True  # the JVM does not answer
            if stopped:
                _log.warning("the Spark session's JVM went away: starting a new session")
                with self._lock:
                    _discard(self._session)
                    self._session = None
                    self._views.clear()
        self.session()

    def _start(self) -> Any:
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master(self._settings.master)
            .appName("lomas-worker")
            .config("spark.driver.memory", self._settings.driver_memory)
        )
        local = (
            {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
            if self._settings.master.startswith("local")
            else {}
        )
        conf = {**_DEFAULT_CONF, **local, **self._settings.conf, **_FIXED_CONF}
        for key, value in conf.items():
            builder = builder.config(key, value)
        _log.info("starting a Spark session (master %s)", self._settings.master)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session

    def view(self, source: DataSource, metadata: DatasetMetadata) -> str:
        """The temporary view of `source`'s folder with the metadata's columns, registered once."""
        columns = tuple(metadata.column_names)
        key = (source.path, columns)
        with self._lock:
            name = self._views.get(key)
        if name is not None:
            return name
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        name = f"lomas_{digest}"
        session = self.session()
        frame = session.read.parquet(source.path).select(*(f"`{c}`" for c in columns))
        frame.createOrReplaceTempView(name)
        with self._lock:
            self._views[key] = name
        return name

    def run_sql(self, sql: str) -> list[Any]:
        """Run one checked SELECT; a header row, then the rows (exact decimals as int or float)."""
        frame = self.session().sql(sql)
        header = tuple(frame.columns)
        rows = [tuple(_plain(value) for value in row) for row in frame.collect()]
        return [header, *rows]

    def reader(self, source: DataSource, metadata: DatasetMetadata) -> PushdownReader:
        """The reader that runs smartnoise-sql's subqueries on `source`'s folder."""
        from lomas_executor.pushdown_sql import PushdownReader

        view = self.view(source, metadata)
        return PushdownReader(view, (view,), self.run_sql)

    def stop(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.stop()
                self._session = None
                self._views.clear()


def _discard(session: Any) -> None:
    """Forget a session whose JVM is gone, so that the next start launches a new JVM: PySpark
    keeps the JVM's gateway and the active context and session in class attributes, which
    `SparkSession.stop` cannot reset once the JVM is gone (it calls into it)."""
    try:
        session.sparkContext.stop()  # tolerates a dead JVM (a warning)
    except Exception:
        _log.debug("stopping a dead Spark context failed", exc_info=True)
    _reset_pyspark()


def _reset_pyspark() -> None:
    """Clear PySpark's singletons (after a dead JVM or a failed start), so that the next start
    launches a new JVM instead of reusing a gateway or context that will never answer."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession, SQLContext

    gateway = SparkContext._gateway
    with SparkContext._lock:
        _forget(SparkContext, "_active_spark_context", "_gateway", "_jvm")
    _forget(SparkSession, "_instantiatedSession", "_activeSession")
    _forget(SQLContext, "_instantiatedContext")
    if gateway is not None:
        try:
            gateway.shutdown()  # the Python side's sockets and callback server
        except Exception:
            _log.debug("closing a dead Spark gateway failed", exc_info=True)


def _forget(owner: type, *names: str) -> None:
    """Set the class attributes `names` of `owner` (where PySpark keeps its singletons) to None."""
    for name in names:
        setattr(owner, name, None)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
