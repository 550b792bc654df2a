"""The researcher's client: pandas in, pandas out, exact budgets, typed errors.

from lomas.client import Client
client = Client("localhost:50051", token=TOKEN, dataset="PENGUIN")
client.smartnoise_sql.query("SELECT COUNT(*) AS n FROM df", epsilon=1.0, delta=1e-5)
client.opendp.query(pipeline)  # an OpenDP Measurement, or a Polars LazyFrame with `dp` expressions
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, TypedDict, TypeVar, Unpack

import grpc
import pandas as pd
import pyarrow as pa
from google.protobuf import json_format

from lomas.client.diffprivlib_client import DiffPrivLibClient
from lomas.client.errors import InvalidArgument, from_rpc_error
from lomas.client.family import refuse_unknown, submit_options
from lomas.client.jobs import QueryJob, progress_wanted, watch_events, with_progress
from lomas.client.opendp_parts import NotInPartsForm, parts_json
from lomas.client.options import RunOptions, SubmitOptions
from lomas.client.options import decimal_text as _decimal_text
from lomas.client.smartnoise_synth_client import SmartnoiseSynthClient
from lomas.common.v1 import privacy_pb2, query_pb2
from lomas.gateway.v1 import gateway_pb2, gateway_pb2_grpc

T = TypeVar("T")


def frame_from_ipc(data: bytes) -> pd.DataFrame:
    """An Arrow IPC stream as a pandas DataFrame."""
    if not data:
        return pd.DataFrame()
    with pa.ipc.open_stream(data) as reader:
        return reader.read_all().to_pandas()


def loss_to_dict(loss: privacy_pb2.PrivacyLoss, prefix: str = "") -> dict[str, Decimal]:
    """A privacy loss as exact Decimals, keyed like Lomas (`epsilon`, `delta`) or `rho`."""
    kind = loss.WhichOneof("loss")
    if kind == "approx_dp":
        return {
            f"{prefix}epsilon": Decimal(loss.approx_dp.epsilon),
            f"{prefix}delta": Decimal(loss.approx_dp.delta),
        }
    if kind == "pure_dp":
        return {f"{prefix}epsilon": Decimal(loss.pure_dp.epsilon), f"{prefix}delta": Decimal(0)}
    if kind == "rho_zcdp":
        return {f"{prefix}rho": Decimal(loss.rho_zcdp.rho)}
    return {}


class Client:
    """A researcher's connection to one dataset on a Lomas mesh gateway."""

    def __init__(
        self,
        target: str,
        dataset_name: str | None = None,
        *,
        token: str,
        dataset: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_seconds: float = 600.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        """`Client("localhost:50051", "PENGUIN", token=...)` as in Lomas; `dataset_name=` and
        `dataset=` name the dataset too (one of them, or both alike)."""
        if dataset_name is not None and dataset is not None and dataset_name != dataset:
            raise TypeError("dataset_name and dataset name different datasets: give one")
        chosen = dataset_name if dataset_name is not None else dataset
        if not chosen:
            raise TypeError("name the dataset: Client(url, dataset_name, token=...)")
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout_seconds
        self.dataset: str = chosen
        self.smartnoise_sql = SmartnoiseSqlClient(self)
        self.opendp = OpenDpClient(self)
        self.diffprivlib = DiffPrivLibClient(self)
        self.smartnoise_synth = SmartnoiseSynthClient(self)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # Datasets ----------------------------------------------------------------------------------

    def list_datasets(self) -> list[str]:
        """Names of the datasets you hold a grant on."""
        names: list[str] = []
        token = ""
        while True:
            response = self._call(
                self._stub.ListAccessibleDatasets,
                gateway_pb2.ListAccessibleDatasetsRequest(page_token=token),
            )
            names.extend(response.dataset_names)
            token = response.next_page_token
            if not token:
                return names

    def get_dataset_metadata(self) -> dict[str, Any]:
        """The dataset's metadata: the document Lomas administrators write in YAML (SmartNoise-SQL
        form: `max_ids`, `rows`, `row_privacy`, `columns`, ...), which travels as JSON text."""
        response = self._call(
            self._stub.GetDatasetMetadata,
            gateway_pb2.GetDatasetMetadataRequest(dataset=self.dataset),
        )
        return dict(json.loads(response.metadata_json))

    def get_dummy_dataset(self, nb_rows: int = 100, seed: int = 42) -> pd.DataFrame:
        """Seeded dummy data that follows the metadata (no private data, free)."""
        request = gateway_pb2.GetDummyDatasetRequest(
            dataset=self.dataset, row_count=_dummy_rows(nb_rows), seed=seed
        )
        response = self._call(self._stub.GetDummyDataset, request)
        return frame_from_ipc(response.arrow_ipc)

    # Budget ------------------------------------------------------------------------------------

    def _budget(self, delta: str = "") -> gateway_pb2.GetBudgetResponse:
        return self._call(
            self._stub.GetBudget, gateway_pb2.GetBudgetRequest(dataset=self.dataset, delta=delta)
        )

    def get_initial_budget(self) -> dict[str, Decimal]:
        """The budget granted, e.g. {"initial_epsilon": Decimal("10"), "initial_delta": ...}."""
        return loss_to_dict(self._budget().initial, "initial_")

    def get_total_spent_budget(self) -> dict[str, Decimal]:
        """The budget charged so far, e.g. {"total_spent_epsilon": ..., "total_spent_delta": ...}."""
        return loss_to_dict(self._budget().spent, "total_spent_")

    def get_remaining_budget(
        self, delta: float | str | Decimal | None = None
    ) -> dict[str, Decimal]:
        """What is left, e.g. {"remaining_epsilon": ..., "remaining_delta": ...}.

        With `delta`, a zCDP (rho) budget is also shown as the epsilon it affords at that delta
        (`remaining_epsilon_at_delta`), rounded down.
        """
        response = self._budget("" if delta is None else _decimal_text(delta, "delta"))
        remaining = loss_to_dict(response.remaining, "remaining_")
        if response.HasField("remaining_at_delta"):
            remaining["remaining_epsilon_at_delta"] = Decimal(response.remaining_at_delta.epsilon)
            remaining["at_delta"] = Decimal(response.remaining_at_delta.delta)
        return remaining

    # Archive -----------------------------------------------------------------------------------

    def _previous(self) -> Iterator[gateway_pb2.PreviousQuery]:
        token = ""
        while True:
            response = self._call(
                self._stub.ListQueries,
                gateway_pb2.ListQueriesRequest(dataset=self.dataset, page_token=token),
            )
            yield from response.queries
            token = response.next_page_token
            if not token:
                return

    def get_previous_queries(self) -> list[dict[str, Any]]:
        """Your previous real queries on this dataset, newest first, with their releases."""
        return [
            {
                "query_id": q.query_id,
                "dataset": q.dataset,
                "query_kind": q.query.WhichOneof("kind"),
                "query": json_format.MessageToDict(
                    q.query,
                    preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True,
                ),
                "cost": loss_to_dict(q.cost),
                "result": frame_from_ipc(q.release) if q.release else None,
                "error_reason": q.error_reason or None,
                "submitted_at": q.submit_time.ToDatetime(),
            }
            for q in self._previous()
        ]

    # Queries -----------------------------------------------------------------------------------

    def _estimate(self, query: query_pb2.Query) -> dict[str, Decimal]:
        response = self._call(
            self._stub.EstimateQueryCost,
            gateway_pb2.EstimateQueryCostRequest(dataset=self.dataset, query=query),
        )
        return loss_to_dict(response.cost)

    def _accuracy(
        self, query: query_pb2.Query, alpha: float | str | Decimal
    ) -> dict[str, Decimal | None]:
        response = self._call(
            self._stub.EstimateQueryAccuracy,
            gateway_pb2.EstimateQueryAccuracyRequest(
                dataset=self.dataset, query=query, alpha=_decimal_text(alpha, "alpha")
            ),
        )
        return {
            column.column: Decimal(column.half_width) if column.half_width else None
            for column in response.columns
        }

    def _execute(self, query: query_pb2.Query, run: RunOptions) -> pd.DataFrame:
        dummy = run.get("dummy", False)
        request = gateway_pb2.ExecuteQueryRequest(
            dataset=self.dataset,
            query=query,
            dummy=dummy,
            dummy_row_count=_dummy_rows(run.get("nb_rows", 100)) if dummy else 0,
            dummy_seed=run.get("seed", 42) if dummy else 0,
            # Always send a request id, so the transport's own retries can never charge twice.
            request_id=run.get("request_id") or ("" if dummy else str(uuid.uuid4())),
            fresh=run.get("fresh", False),
        )
        if dummy or not progress_wanted(run.get("progress")):
            return self._release_frame(self._call(self._stub.ExecuteQuery, request))
        response = with_progress(
            lambda: self._call(self._stub.ExecuteQuery, request),
            lambda: self._stub.WatchQuery(
                gateway_pb2.WatchQueryRequest(request_id=request.request_id),
                metadata=self._metadata,
                timeout=self._timeout,
            ),
        )
        return self._release_frame(response)

    def _release_frame(self, response: gateway_pb2.ExecuteQueryResponse) -> pd.DataFrame:
        frame = frame_from_ipc(response.release)
        frame.attrs["query_id"] = response.query_id
        frame.attrs["cost"] = loss_to_dict(response.cost)
        frame.attrs["replay"] = response.replay
        return frame

    # Jobs --------------------------------------------------------------------------------------

    def submit(self, query: query_pb2.Query, **options: Unpack[SubmitOptions]) -> QueryJob:
        """Start a real query and return at once with its job (`smartnoise_sql.submit` and
        `opendp.submit` build the query for you). Every refusal that needs no data (invalid query,
        budget, access) is raised here, before any charge."""
        response = self._call(
            self._stub.SubmitQuery,
            gateway_pb2.SubmitQueryRequest(
                dataset=self.dataset,
                query=query,
                request_id=options.get("request_id") or str(uuid.uuid4()),
                fresh=options.get("fresh", False),
            ),
        )
        return self.job(response.query_id)

    def job(self, query_id: str) -> QueryJob:
        """The job of one of your queries, by its query id (from `submit` or a release's attrs)."""
        return QueryJob(
            query_id,
            watch=lambda timeout: self._watch(query_id, timeout),
            cancel=lambda: self._cancel(query_id),
            frame=self._release_frame,
        )

    def _watch(
        self, query_id: str, timeout: float | None
    ) -> Iterator[gateway_pb2.WatchQueryResponse]:
        call = self._stub.WatchQuery(
            gateway_pb2.WatchQueryRequest(query_id=query_id),
            metadata=self._metadata,
            timeout=timeout or self._timeout,
        )
        return watch_events(call)

    def _cancel(self, query_id: str) -> dict[str, Decimal]:
        response = self._call(
            self._stub.CancelQuery, gateway_pb2.CancelQueryRequest(query_id=query_id)
        )
        return loss_to_dict(response.refunded)


class SmartnoiseSqlSubmitOptions(SubmitOptions, total=False):
    """The keyword arguments of `SmartnoiseSqlClient.submit` (our own call, not Lomas's): the
    query's `mechanisms` (default: SmartNoise-SQL's own) and `postprocess` (default True), as
    `query` takes them, then the submit's."""

    mechanisms: Mapping[str, str] | None
    postprocess: bool


class SmartnoiseSqlClient:
    """DP SQL with SmartNoise-SQL. The SQL names the table `df`, as in Lomas."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @staticmethod
    def _query(
        query: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal,
        mechanisms: Mapping[str, str] | None,
        postprocess: bool,
    ) -> query_pb2.Query:
        return query_pb2.Query(
            smartnoise_sql=query_pb2.SmartnoiseSqlQuery(
                sql=query,
                epsilon=_decimal_text(epsilon, "epsilon"),
                delta=_decimal_text(delta, "delta"),
                mechanisms=dict(mechanisms or {}),
                postprocess=postprocess,
            )
        )

    def cost(
        self,
        query: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal,
        mechanisms: Mapping[str, str] | None = None,
    ) -> dict[str, Decimal]:
        """The exact cost the query would be charged (SmartNoise-SQL charges per mechanism)."""
        return self._client._estimate(self._query(query, epsilon, delta, mechanisms, True))

    def accuracy(
        self,
        query: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal,
        mechanisms: Mapping[str, str] | None = None,
        alpha: float | str | Decimal = "0.05",
    ) -> dict[str, Decimal | None]:
        """How noisy the release would be, free: per output column, the half-width of the
        (1 - alpha) interval of its noise (with probability 1 - alpha the release is within it of
        the true value). None where SmartNoise-SQL has no closed form (AVG, grouping keys...)."""
        return self._client._accuracy(self._query(query, epsilon, delta, mechanisms, True), alpha)

    def query(
        self,
        query: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal,
        mechanisms: Mapping[str, str] | None = None,
        postprocess: bool = True,
        **run: Unpack[RunOptions],
    ) -> pd.DataFrame:
        """Run the query and return the DP release (`frame.attrs` holds query_id, cost and replay).

        With `dummy=True` it runs on seeded dummy data and costs nothing. Asking the same query again
        returns your earlier release for free (`attrs["replay"]` is True): re-releasing a release is
        post-processing. `fresh=True` pays for a new draw instead. A retry with the same `request_id`
        returns the first release and is never charged twice.
        """
        return self._client._execute(
            self._query(query, epsilon, delta, mechanisms, postprocess), run
        )

    def submit(
        self,
        query: str,
        epsilon: float | str | Decimal,
        delta: float | str | Decimal,
        **options: Unpack[SmartnoiseSqlSubmitOptions],
    ) -> QueryJob:
        """Start the query and return its job at once: `job.result()` waits for the release,
        `job.status()` tells where it stands, `job.cancel()` stops it before it touches data.
        `mechanisms` and `postprocess` are keywords here (see `SmartnoiseSqlSubmitOptions`)."""
        refuse_unknown(options, SmartnoiseSqlSubmitOptions.__optional_keys__)
        sql = self._query(
            query, epsilon, delta, options.get("mechanisms"), options.get("postprocess", True)
        )
        return self._client.submit(sql, **submit_options(options))


_MECHANISMS = {
    "laplace": query_pb2.OPEN_DP_MECHANISM_LAPLACE,
    "gaussian": query_pb2.OPEN_DP_MECHANISM_GAUSSIAN,
}


class PipelineOptions(TypedDict, total=False):
    """How an OpenDP pipeline is priced and run (keyword arguments, as in Lomas):

    - `fixed_delta`: turns a zCDP loss or a privacy curve into (epsilon, delta) at this delta;
    - `mechanism` (default "laplace"; or "gaussian"): the noise of a Polars query;
    - `global_scale`: the scale of a Polars query's expressions that set none;
    - `threshold`: a Polars query's minimum group size when its group keys are not public.
    """

    fixed_delta: float | str | Decimal | None
    mechanism: str
    global_scale: float | str | Decimal | None
    threshold: int | None


class OpenDpQueryOptions(PipelineOptions, RunOptions, total=False):
    """The keyword arguments of `OpenDpClient.query`: the pipeline's, then the run's."""


class OpenDpSubmitOptions(PipelineOptions, SubmitOptions, total=False):
    """The keyword arguments of `OpenDpClient.submit`: the pipeline's, then the submit's."""


class OpenDpClient:
    """OpenDP pipelines, in the two forms Lomas accepts (needs `opendp[polars]`, pinned as the server).

    * an OpenDP `Measurement` built with OpenDP's Python API: its input is the dataset as CSV text
      without a header line, columns in metadata order, so it starts with
      `dp.t.make_split_dataframe(",", col_names=list(metadata["columns"]))`, as in Lomas;
    * an OpenDP Polars query: a Polars `LazyFrame` using OpenDP's `dp` expressions (or the
      `LazyFrameQuery` that `dp.Context.query()` builds). The server builds the input domain
      (column types, margins) from the dataset's metadata; `mechanism` picks Laplace (pure DP) or
      Gaussian (zCDP) noise, `global_scale` scales the expressions that set no scale, and
      `threshold` is the minimum group size when group keys are not public.

    Costs are the pipeline's privacy map at the metadata's `max_ids`: epsilon for pure DP,
    (epsilon, delta) for approximate DP, rho for zCDP. `fixed_delta` turns a zCDP loss or a privacy
    curve into (epsilon, delta) at that delta (curves need it).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @staticmethod
    def _query(pipeline: Any, options: PipelineOptions) -> query_pb2.Query:
        fixed_delta = options.get("fixed_delta")
        mechanism = options.get("mechanism", "laplace")
        global_scale = options.get("global_scale")
        threshold = options.get("threshold")
        opendp = query_pb2.OpenDpQuery(
            fixed_delta="" if fixed_delta is None else _decimal_text(fixed_delta, "fixed_delta")
        )
        measurement_json = _measurement_json(pipeline)
        if measurement_json is not None:
            opendp.measurement_json = measurement_json
            return query_pb2.Query(opendp=opendp)
        if mechanism not in _MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(_MECHANISMS)}")
        opendp.polars.CopyFrom(
            query_pb2.OpenDpPolarsQuery(
                plan_json=_plan_json(pipeline),
                mechanism=_MECHANISMS[mechanism],
                global_scale=""
                if global_scale is None
                else _decimal_text(global_scale, "global_scale"),
                threshold=threshold or 0,
            )
        )
        return query_pb2.Query(opendp=opendp)

    def cost(self, pipeline: Any, **options: Unpack[PipelineOptions]) -> dict[str, Decimal]:
        """The exact cost the pipeline would be charged (free; nothing runs on the data)."""
        return self._client._estimate(self._query(pipeline, options))

    def accuracy(
        self,
        pipeline: Any,
        alpha: float | str | Decimal = "0.05",
        **options: Unpack[PipelineOptions],
    ) -> dict[str, Decimal | None]:
        """How noisy the release would be, free: per released column (`value` for a measurement),
        the half-width of the (1 - alpha) interval of its noise, from OpenDP's own utilities."""
        return self._client._accuracy(self._query(pipeline, options), alpha)

    def query(self, pipeline: Any, **options: Unpack[OpenDpQueryOptions]) -> pd.DataFrame:
        """Run the pipeline and return its DP release as a DataFrame.

        A measurement's release is in column `value` (one row for a number, one row per element for
        a list; `key`/`value` for a map); a Polars query returns its frame. `dummy=True` runs on
        seeded dummy data for free; `request_id` and `fresh` work as for SmartNoise-SQL.
        """
        return self._client._execute(self._query(pipeline, options), options)

    def submit(self, pipeline: Any, **options: Unpack[OpenDpSubmitOptions]) -> QueryJob:
        """Start the pipeline and return its job at once (see `SmartnoiseSqlClient.submit`)."""
        submit: SubmitOptions = {}
        if "request_id" in options:
            submit["request_id"] = options["request_id"]
        if "fresh" in options:
            submit["fresh"] = options["fresh"]
        return self._client.submit(self._query(pipeline, options), **submit)


def _measurement_json(pipeline: Any) -> str | None:
    """A Measurement as OpenDP JSON, in the parts form (`lomas.client.opendp_parts`) or OpenDP's
    own (None if `pipeline` is not a Measurement)."""
    try:
        import opendp.prelude as dp
        from opendp import mod as opendp_mod
    except ImportError:  # pragma: no cover - the client's opendp extra is not installed
        raise ImportError(
            "OpenDP pipelines need the opendp package (pip install opendp[polars])"
        ) from None
    if isinstance(pipeline, dp.Measurement):
        # Each distinct constructor once (a few kB where OpenDP's form of a `then_` chain is
        # 0.6 MB); what the parts form cannot hold goes in OpenDP's own form.
        try:
            return parts_json(pipeline, str(opendp_mod.__version__))
        except NotInPartsForm:
            serialize: Callable[[Any], object] = dp.serialize  # OpenDP leaves it unannotated
            return str(serialize(pipeline))
    if isinstance(pipeline, dp.Transformation):
        raise TypeError("the pipeline must be a Measurement (end it with a noise mechanism)")
    return None


def _plan_json(pipeline: Any) -> str:
    """The Polars plan of a LazyFrame (or of OpenDP's LazyFrameQuery) as Polars JSON."""
    import polars as pl

    plan = getattr(pipeline, "polars_plan", pipeline)  # opendp.extras.polars.LazyFrameQuery
    if not isinstance(plan, pl.LazyFrame):
        raise TypeError(
            "the pipeline must be an OpenDP Measurement or a Polars LazyFrame with OpenDP's dp "
            f"expressions, not {type(pipeline).__name__}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Polars flags its JSON plan format as unstable
        return str(plan.serialize(format="json"))


def _dummy_rows(nb_rows: int) -> int:
    """`nb_rows` as sent: at least 1, as Lomas has it. On the wire 0 means "the default" (an unset
    proto3 field, as AIP-158 has it for page sizes), so 0 is refused here, before anything is sent;
    the gateway refuses negatives and sizes above its maximum with the same reason."""
    if nb_rows < 1:
        raise InvalidArgument(
            "INVALID_ARGUMENT",
            "DUMMY_ROWS_OUT_OF_RANGE",
            f"nb_rows must be at least 1 (got {nb_rows})",
            {},
        )
    return nb_rows
