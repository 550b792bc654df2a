"""DP execution end to end, through the real client: every query kind, source and format, and every
refusal (with its code and reason, and no budget change when nothing ran).

One mesh (PostgreSQL stores, the machine's Redis) with datasets on a local S3 server (moto, which
checks request signatures), on a local HTTP server and on local files, in CSV and Parquet.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pandas as pd
import polars as pl
import pytest
import yaml

from lomas.budget.v1 import budget_pb2
from lomas.client import Client, LomasError
from lomas.client.admin import (
    AdminClient,
    approx_dp,
    local_source,
    rho_zcdp,
    s3_source,
    url_source,
)
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.local import SYSTEM_REDIS_URL, local_mesh
from lomas_embedded.mesh import Mesh
from lomas_executor.demo import make_penguin_like, penguin_metadata_text
from lomas_testing.data_servers import HttpFileServer, S3Server

COUNT = "SELECT COUNT(*) AS n FROM df"
BUCKET = "lomas-datasets"
CREDENTIALS = "moto-store"
CSV, PARQUET = dataset_pb2.DATA_FORMAT_CSV, dataset_pb2.DATA_FORMAT_PARQUET

dp.enable_features("contrib")


@dataclass
class Platform:
    mesh: Mesh
    issuer: DevIssuer
    http: HttpFileServer
    s3: S3Server
    data_dir: Path
    metadata: dict[str, Any]

    def admin(self) -> AdminClient:
        return AdminClient(self.mesh.gateway_target, token=self.issuer.token(demo.ADMIN))

    def researcher(self, dataset: str, allocation: Any = None) -> Client:
        """A fresh researcher with a grant on `dataset` (each test owns its budget)."""
        name = f"researcher-{uuid.uuid4().hex[:8]}"
        with self.admin() as admin:
            admin.add_user(name)
            admin.grant(name, dataset, allocation or approx_dp("50", "0.01"))
        client = Client(self.mesh.gateway_target, token=self.issuer.token(name), dataset=dataset)
        client.user = name  # type: ignore[attr-defined]
        return client


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("execution")
    frame = make_penguin_like()
    files = tmp / "files"
    files.mkdir()
    frame.to_csv(files / "penguin.csv", index=False)
    frame.to_parquet(files / "penguin.parquet", index=False)
    frame.to_csv(files / "watched.csv", index=False)  # hostile tests count reads of this one
    metadata = yaml.safe_load(penguin_metadata_text())

    with S3Server(tmp / "moto.log") as s3, HttpFileServer(files) as http:
        s3.put(BUCKET, "penguin.csv", (files / "penguin.csv").read_bytes())
        s3.put(BUCKET, "nested/penguin.parquet", (files / "penguin.parquet").read_bytes())
        credentials = s3.write_credentials_file(tmp / "s3-credentials.json", CREDENTIALS)
        with local_mesh(
            tmp,
            stores="postgresql",
            redis_url=SYSTEM_REDIS_URL,
            extra_env={"LOMAS_S3_CREDENTIALS_FILE": str(credentials)},
        ) as running:
            platform = Platform(running.mesh, running.issuer, http, s3, tmp, metadata)
            with platform.admin() as admin:
                for name, source, fmt in (
                    ("LOCAL_CSV", local_source(files / "penguin.csv"), CSV),
                    ("LOCAL_PARQUET", local_source(files / "penguin.parquet"), PARQUET),
                    ("S3_CSV", s3_source(BUCKET, "penguin.csv", s3.endpoint_url, CREDENTIALS), CSV),
                    (
                        "S3_PARQUET",
                        s3_source(BUCKET, "nested/penguin.parquet", s3.endpoint_url, CREDENTIALS),
                        PARQUET,
                    ),
                    ("HTTP_CSV", url_source(http.url("penguin.csv")), CSV),
                    ("HTTP_PARQUET", url_source(http.url("penguin.parquet")), PARQUET),
                    ("WATCHED", url_source(http.url("watched.csv")), CSV),
                ):
                    admin.add_dataset(name, source, metadata, fmt)
            yield platform


# -- helpers ---------------------------------------------------------------------------------------


def budget_state(client: Client) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    return client.get_total_spent_budget(), client.get_remaining_budget()


def ledger_kinds(platform: Platform, client: Client) -> list[int]:
    with platform.admin() as admin:
        return [e.kind for e in admin.ledger_history(client.user, client.dataset)]  # type: ignore[attr-defined]


def assert_refused(error: LomasError, code: str, reason: str, *fragments: str) -> None:
    assert (error.code, error.reason) == (code, reason), error
    for fragment in fragments:
        assert fragment in error.message, error.message


def mean_bill(columns: list[str], noise: str = "laplace") -> dp.Measurement:
    """The Lomas "legacy" form: the measurement reads the dataset as CSV text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pipeline = (
            dp.t.make_split_dataframe(",", columns)
            >> dp.t.make_select_column("bill_length_mm", str)
            >> dp.t.then_cast_default(float)
            >> dp.t.then_impute_constant(40.0)
            >> dp.t.then_clamp((30.0, 65.0))
            >> dp.t.then_resize(344, 40.0)
            >> dp.t.then_mean()
        )
    return pipeline >> (dp.m.then_laplace(0.5) if noise == "laplace" else dp.m.then_gaussian(0.5))


def species_plan() -> pl.LazyFrame:
    """An OpenDP Polars query: count and mean bill length per species, every declared species
    released (the public key set joined in, as OpenDP's `with_keys` does)."""
    grouped = (
        pl.LazyFrame(schema={"species": pl.String, "bill_length_mm": pl.Float64})
        .group_by("species")
        .agg(
            dp.len(scale=2.0),
            pl.col("bill_length_mm").fill_null(40.0).dp.mean((30.0, 65.0), scale=65.0),
        )
    )
    keys = pl.LazyFrame({"species": ["Adelie", "Chinstrap", "Gentoo"]})
    return keys.join(grouped, on="species", how="left", nulls_equal=True)


# -- every kind ------------------------------------------------------------------------------------


def test_every_query_kind_costs_runs_on_dummy_data_and_charges_its_true_cost(
    platform: Platform,
) -> None:
    client = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    kinds = {
        "smartnoise_sql": (
            client.smartnoise_sql,
            ("SELECT species, AVG(bill_length_mm) AS bill FROM df GROUP BY species",),
            {"epsilon": 0.5, "delta": 1e-5},
        ),
        "opendp_measurement": (client.opendp, (mean_bill(columns),), {}),
        "opendp_polars": (client.opendp, (species_plan(),), {}),
    }
    spent = {"total_spent_epsilon": Decimal(0), "total_spent_delta": Decimal(0)}
    for kind, (namespace, args, kwargs) in kinds.items():
        before = budget_state(client)
        cost = namespace.cost(*args, **kwargs)
        assert cost["epsilon"] > 0, kind
        dummy = namespace.query(*args, **kwargs, dummy=True, nb_rows=300, seed=3)
        assert len(dummy) >= 1 and dummy.attrs["cost"] == cost, kind
        assert budget_state(client) == before, f"{kind}: cost and dummy queries are free"

        release = namespace.query(*args, **kwargs)
        assert release.attrs["cost"] == cost, kind
        spent["total_spent_epsilon"] += cost["epsilon"]
        spent["total_spent_delta"] += cost["delta"]
        assert client.get_total_spent_budget() == spent, kind
        archived = next(
            q for q in client.get_previous_queries() if q["query_id"] == release.attrs["query_id"]
        )
        pd.testing.assert_frame_equal(archived["result"], release, check_like=True)

    archive = client.get_previous_queries()
    assert sorted(q["query_kind"] for q in archive) == ["opendp", "opendp", "smartnoise_sql"]
    forms = {next(iter(q["query"]["opendp"])) for q in archive if q["query_kind"] == "opendp"}
    assert {"measurement_json", "polars"} <= forms


def test_opendp_releases_have_the_shapes_of_their_pipelines(platform: Platform) -> None:
    client = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    mean = client.opendp.query(mean_bill(columns))
    assert list(mean.columns) == ["value"] and len(mean) == 1
    assert 30 <= mean["value"][0] <= 65

    frame = client.opendp.query(species_plan())
    assert list(frame.columns) == ["species", "len", "bill_length_mm"]
    assert sorted(frame["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    # The same plan built through OpenDP's Context (a LazyFrameQuery) is accepted as well.
    context = dp.Context.compositor(
        data=pl.LazyFrame(schema={"species": pl.String, "bill_length_mm": pl.Float64}),
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=1.0),
        split_evenly_over=1,
        margins=[dp.polars.Margin(by=[], max_length=1000)],
    )
    query = context.query().select(dp.len(scale=4.0))
    assert client.opendp.cost(query) == {"epsilon": Decimal("0.25"), "delta": Decimal(0)}


def test_zcdp_costs_follow_the_ledger_and_fixed_delta(platform: Platform) -> None:
    approx = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    gaussian = mean_bill(columns, "gaussian")
    before = budget_state(approx)
    with pytest.raises(
        LomasError
    ) as mismatch:  # a rho cannot be charged to an (epsilon, delta) ledger
        approx.opendp.query(gaussian)
    assert_refused(mismatch.value, "INVALID_ARGUMENT", "PRIVACY_DEFINITION_MISMATCH")
    assert budget_state(approx) == before

    at_delta = approx.opendp.query(gaussian, fixed_delta=1e-6)
    assert at_delta.attrs["cost"]["delta"] == Decimal("0.000001")

    zcdp = platform.researcher(demo.DATASET, rho_zcdp("2"))
    release = zcdp.opendp.query(gaussian)
    rho = release.attrs["cost"]["rho"]
    assert 0 < rho < 1
    assert zcdp.get_total_spent_budget() == {"total_spent_rho": rho}


# -- every source and format -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset", ["LOCAL_CSV", "LOCAL_PARQUET", "S3_CSV", "S3_PARQUET", "HTTP_CSV", "HTTP_PARQUET"]
)
def test_every_source_and_format_is_read(platform: Platform, dataset: str) -> None:
    client = platform.researcher(dataset)
    counted = client.smartnoise_sql.query(COUNT, epsilon=5.0, delta=0)
    assert abs(int(counted["n"][0]) - 344) < 40
    by_species = client.opendp.query(species_plan())
    assert sorted(by_species["species"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert abs(int(by_species["len"].sum()) - 344) < 40
    assert len(client.get_previous_queries()) == 2


def test_s3_credentials_stay_on_the_workers(platform: Platform) -> None:
    with platform.admin() as admin:
        stored = {d.name: d for d in admin.list_datasets()}["S3_CSV"]
    text = str(stored)
    assert CREDENTIALS in text
    assert platform.s3.secret_access_key not in text
    assert platform.s3.access_key_id not in text
    # Credentials the workers do not hold: the query fails on the worker, naming only the name,
    # before any data access, so nothing is charged.
    with platform.admin() as admin:
        admin.add_dataset(
            "S3_UNKNOWN_CREDENTIALS",
            s3_source(BUCKET, "penguin.csv", platform.s3.endpoint_url, "nobody"),
            platform.metadata,
            CSV,
        )
    client = platform.researcher("S3_UNKNOWN_CREDENTIALS")
    before = budget_state(client)
    with pytest.raises(LomasError) as unknown:
        client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0)
    assert_refused(
        unknown.value,
        "FAILED_PRECONDITION",
        "DATASET_SOURCE_UNAVAILABLE",
        "no S3 credentials named",
    )
    assert platform.s3.secret_access_key not in unknown.value.message
    assert budget_state(client) == before


def test_a_missing_data_file_fails_before_data_access_and_is_refunded(platform: Platform) -> None:
    with platform.admin() as admin:
        admin.add_dataset(
            "MISSING_FILE",
            local_source(platform.data_dir / "files" / "no-such-file.csv"),
            platform.metadata,
            CSV,
        )
    client = platform.researcher("MISSING_FILE")
    before = budget_state(client)
    with pytest.raises(LomasError) as missing:
        client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0)
    assert_refused(missing.value, "FAILED_PRECONDITION", "DATASET_SOURCE_UNAVAILABLE", "not found")
    assert budget_state(client) == before
    # The refund is in the ledger's history: a reservation and its release, no charge.
    kinds = ledger_kinds(platform, client)
    assert budget_pb2.LEDGER_ENTRY_KIND_RELEASE in kinds
    assert budget_pb2.LEDGER_ENTRY_KIND_COMMIT not in kinds


# -- refusals --------------------------------------------------------------------------------------


def test_refusals_carry_code_and_reason_and_change_no_budget(platform: Platform) -> None:
    client = platform.researcher(demo.DATASET)
    columns = list(platform.metadata["columns"])
    before = budget_state(client)
    entries = ledger_kinds(platform, client)
    unscaled = pl.LazyFrame(schema={"body_mass_g": pl.Float64}).select(
        pl.col("body_mass_g").fill_null(4000.0).dp.sum((2000.0, 7000.0))
    )
    curve = dp.c.make_zCDP_to_approxDP(mean_bill(columns, "gaussian"))
    cases: list[tuple[Any, str, str, str]] = [
        # SmartNoise-SQL: what it cannot do
        (
            lambda: client.smartnoise_sql.query("SELECT MAX(body_mass_g) FROM df", 1.0, 0),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "don't know how to rewrite aggregate function",
        ),
        (
            lambda: client.smartnoise_sql.query("SELECT SUM(wings) FROM df", 1.0, 0),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "Column cannot be found",
        ),
        (
            lambda: client.smartnoise_sql.query(
                "SELECT AVG(bill_length_mm) FROM df", epsilon="0.000000001", delta=1e-5
            ),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "Noise scale is too large",
        ),
        # OpenDP: a curve needs a delta, a plan needs scales, unknown constructors are refused
        (lambda: client.opendp.query(curve), "INVALID_ARGUMENT", "QUERY_INVALID", "fixed_delta"),
        (
            lambda: client.opendp.query(unscaled),
            "INVALID_ARGUMENT",
            "QUERY_INVALID",
            "OpenDP refused the Polars plan",
        ),
        (
            lambda: client.opendp.query(unscaled, mechanism="uniform"),
            "",
            "",
            "mechanism must be one of",
        ),
    ]
    for index, (call, code, reason, text) in enumerate(cases):
        if not code:
            with pytest.raises(ValueError, match=text):
                call()
            continue
        with pytest.raises(LomasError) as refused:
            call()
        assert_refused(refused.value, code, reason, text)
        assert budget_state(client) == before, index
    assert ledger_kinds(platform, client) == entries  # not even a reservation


def test_unbounded_columns_are_refused_before_data_access(platform: Platform) -> None:
    metadata = json.loads(json.dumps(platform.metadata))
    del metadata["columns"]["body_mass_g"]["lower"], metadata["columns"]["body_mass_g"]["upper"]
    with platform.admin() as admin:
        admin.add_dataset("UNBOUNDED", url_source(platform.http.url("watched.csv")), metadata, CSV)
    client = platform.researcher("UNBOUNDED")
    reads = platform.http.count("watched.csv")
    with pytest.raises(LomasError) as refused:
        client.smartnoise_sql.query("SELECT AVG(body_mass_g) AS m FROM df", 1.0, 1e-5)
    assert_refused(
        refused.value, "INVALID_ARGUMENT", "QUERY_INVALID", "without bounds", "body_mass_g"
    )
    assert platform.http.count("watched.csv") == reads
    assert client.get_total_spent_budget() == {
        "total_spent_epsilon": Decimal(0),
        "total_spent_delta": Decimal(0),
    }


# -- hostile pipelines -----------------------------------------------------------------------------


def test_hostile_pipelines_are_refused_before_any_data_access(platform: Platform) -> None:
    """Untrusted OpenDP JSON and Polars plans, sent as raw protobuf through the real client."""
    from lomas.common.v1 import query_pb2

    client = platform.researcher("WATCHED")
    columns = list(platform.metadata["columns"])
    before = budget_state(client)
    entries = ledger_kinds(platform, client)

    def node(name: str, module: str, **kwargs: Any) -> dict[str, Any]:
        return {
            "__function__": name,
            "__module__": module,
            "__kwargs__": kwargs,
            "__version__": dp.__version__,
        }

    honest = json.loads(dp.serialize(mean_bill(columns)))
    smuggled = json.loads(json.dumps(honest))
    smuggled["__kwargs__"]["transformation0"] = node(
        "make_user_transformation", "transformations", function="os.system"
    )
    vector_space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    lying_domain = (
        vector_space >> dp.t.then_clamp((0.0, 1.0)) >> dp.t.then_sum() >> dp.m.then_laplace(1.0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        udf_plan = (
            pl.LazyFrame(schema={"bill_length_mm": pl.Float64})
            .select(
                pl.col("bill_length_mm").map_batches(lambda s: s * 2).dp.sum((0.0, 1.0), scale=1.0)
            )
            .serialize(format="json")
        )
        wrong_schema = (
            pl.LazyFrame(schema={"species": pl.Float64})
            .select(dp.len(scale=1.0))
            .serialize(format="json")
        )

    cases: list[tuple[query_pb2.OpenDpQuery, str, str]] = [
        (
            query_pb2.OpenDpQuery(
                measurement_json=json.dumps(
                    node("enable_features", "mod", features=["honest-but-curious"])
                )
            ),
            "OPENDP_PIPELINE_REFUSED",
            "enable_features",
        ),
        (
            query_pb2.OpenDpQuery(
                measurement_json=json.dumps(node("make_sequential_composition", "combinators"))
            ),
            "OPENDP_PIPELINE_REFUSED",
            "not on the executor's allow-list",
        ),
        (
            query_pb2.OpenDpQuery(measurement_json=json.dumps(smuggled)),
            "OPENDP_PIPELINE_REFUSED",
            "user-defined function",
        ),
        (
            query_pb2.OpenDpQuery(polars=query_pb2.OpenDpPolarsQuery(plan_json=udf_plan)),
            "OPENDP_PIPELINE_REFUSED",
            "AnonymousFunction",
        ),
        (
            query_pb2.OpenDpQuery(measurement_json=dp.serialize(lying_domain)),
            "OPENDP_INPUT_DOMAIN_MISMATCH",
            "input domain must be the dataset as CSV text",
        ),
        (
            query_pb2.OpenDpQuery(polars=query_pb2.OpenDpPolarsQuery(plan_json=wrong_schema)),
            "OPENDP_INPUT_DOMAIN_MISMATCH",
            "'species' is Float64, but the metadata says string",
        ),
    ]
    for opendp, reason, text in cases:
        query = query_pb2.Query(opendp=opendp)
        attempts = [
            lambda q=query: client._estimate(q),
            lambda q=query: client._execute(
                q, dummy=False, nb_rows=0, seed=0, request_id=None, fresh=False
            ),
            lambda q=query: client._execute(
                q, dummy=True, nb_rows=50, seed=1, request_id=None, fresh=False
            ),
        ]
        for call in attempts:
            with pytest.raises(LomasError) as refused:
                call()
            assert_refused(refused.value, "INVALID_ARGUMENT", reason, text)

    assert platform.http.count("watched.csv") == 0, "no hostile pipeline may cause a data read"
    assert budget_state(client) == before
    assert ledger_kinds(platform, client) == entries
    assert client.get_previous_queries() == []


# -- SmartNoise-SQL, complete ----------------------------------------------------------------------


def test_smartnoise_sql_mechanisms_postprocess_group_by_and_true_cost(platform: Platform) -> None:
    client = platform.researcher(demo.DATASET)
    # True cost: AVG is a SUM and a COUNT, each charged epsilon.
    avg = "SELECT species, AVG(bill_length_mm) AS bill FROM df GROUP BY species"
    assert client.smartnoise_sql.cost(avg, epsilon=0.5, delta=1e-5)["epsilon"] == Decimal("1")
    # Per-statistic mechanisms change what is charged (Gaussian counts spend delta).
    laplace = client.smartnoise_sql.cost(avg, epsilon=1.0, delta=1e-5)
    gaussian = client.smartnoise_sql.cost(
        avg, epsilon=1.0, delta=1e-5, mechanisms={"sum_float": "gaussian"}
    )
    assert laplace != gaussian and gaussian["delta"] > laplace["delta"]

    grouped = client.smartnoise_sql.query(
        "SELECT island, sex, COUNT(*) AS n FROM df GROUP BY island, sex ORDER BY island",
        epsilon=1.0,
        delta=1e-5,
    )
    assert list(grouped.columns) == ["island", "sex", "n"]
    assert set(grouped["island"]) <= {"Torgersen", "Biscoe", "Dream"}
    assert list(grouped["island"]) == sorted(grouped["island"])

    raw = client.smartnoise_sql.query(
        "SELECT COUNT(*) AS n, SUM(body_mass_g) AS mass FROM df",
        epsilon=1.0,
        delta=1e-5,
        mechanisms={"count": "gaussian"},
        postprocess=False,
    )
    assert list(raw.columns)[:2] == ["res_0", "res_1"]
    spent = client.get_total_spent_budget()
    charged = sum((q["cost"]["epsilon"] for q in client.get_previous_queries()), Decimal(0))
    assert spent["total_spent_epsilon"] == charged


def test_private_id_metadata_bounds_each_individual(platform: Platform) -> None:
    rng_frame = make_penguin_like(rows=600, seed=5)
    rng_frame.insert(0, "bird_id", [i // 3 for i in range(len(rng_frame))])
    path = platform.data_dir / "files" / "birds.csv"
    rng_frame.to_csv(path, index=False)
    metadata = json.loads(json.dumps(platform.metadata))
    metadata.update(row_privacy=False, max_ids=3, rows=600)
    metadata["columns"] = {"bird_id": {"type": "int", "private_id": True}, **metadata["columns"]}
    with platform.admin() as admin:
        admin.add_dataset("BIRDS", local_source(path), metadata, CSV)
    client = platform.researcher("BIRDS")
    release = client.smartnoise_sql.query(
        "SELECT COUNT(DISTINCT bird_id) AS birds FROM df", epsilon=2.0, delta=1e-5
    )
    assert abs(int(release["birds"][0]) - 200) < 60
    # OpenDP charges at max_ids: three rows per bird triple the cost of a row count.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        count = (
            dp.t.make_split_dataframe(",", list(metadata["columns"]))
            >> dp.t.make_select_column("species", str)
            >> dp.t.then_count()
            >> dp.m.then_laplace(3.0)
        )
    assert client.opendp.cost(count) == {"epsilon": Decimal("1"), "delta": Decimal(0)}


# -- metadata validation at registration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda md: md.pop("max_ids"), "missing required field(s): max_ids"),
        (
            lambda md: md["columns"]["bill_length_mm"].update(lower=70.0),
            "lower bound cannot be larger",
        ),
        (lambda md: md["columns"]["species"].update(cardinality=4), "must equal cardinality"),
        (lambda md: md.update(row_privacy=False), "one column must have private_id"),
        (lambda md: md["columns"]["sex"].update(type="text"), "unknown type 'text'"),
    ],
)
def test_invalid_metadata_is_refused_at_registration(
    platform: Platform, change: Any, message: str
) -> None:
    metadata = json.loads(json.dumps(platform.metadata))
    change(metadata)
    name = f"BAD_{uuid.uuid4().hex[:6].upper()}"
    with platform.admin() as admin:
        with pytest.raises(LomasError) as refused:
            admin.add_dataset(
                name, local_source(platform.data_dir / "files" / "penguin.csv"), metadata, CSV
            )
        assert_refused(refused.value, "INVALID_ARGUMENT", "METADATA_INVALID", message)
        assert name not in {d.name for d in admin.list_datasets()}


def test_ledger_records_one_reservation_and_one_commit_per_query(platform: Platform) -> None:
    client = platform.researcher("HTTP_PARQUET")
    release = client.opendp.query(species_plan())
    with platform.admin() as admin:
        history = admin.ledger_history(client.user, "HTTP_PARQUET")  # type: ignore[attr-defined]
    mine = [e.kind for e in history if e.query_id == release.attrs["query_id"]]
    assert mine == [
        budget_pb2.LEDGER_ENTRY_KIND_RESERVATION,
        budget_pb2.LEDGER_ENTRY_KIND_ACCESS,
        budget_pb2.LEDGER_ENTRY_KIND_COMMIT,
    ]
