"""`lomas-admin`, command by command, against the running platform: every Lomas administration
command's counterpart, its human output and its --json output, its exit code (0 done, 1 refused by
the platform with the reason on stderr, 2 usage), and an empty stderr in normal use.

Most commands run in process (`main(argv)`, the same code the console script runs, to keep the suite
fast); the entry point itself runs as a subprocess where the process matters (--version, warnings)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from admin_cli_testing import Ran, cli, console_script, ok, run
from mesh_testing import RunningMesh

from lomas.admin_cli.parser import build
from lomas.admin_cli.render import count
from lomas_embedded import demo
from lomas_executor.demo import make_penguin_like, penguin_metadata_text

EMBEDDED = pytest.mark.parametrize("platform", ["embedded"], indirect=True)
COUNT = "SELECT COUNT(*) AS n FROM df"


def refused(platform: RunningMesh, *args: str) -> Ran:
    ran = cli(platform, *args)
    assert ran.code == 1 and ran.out == "", ran
    assert ran.err.startswith("lomas-admin: ") and ran.err.endswith("\n"), ran
    return ran


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def penguin_files(directory: Path, rows: int = 344) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data, metadata = directory / "penguin.csv", directory / "penguin_metadata.yaml"
    make_penguin_like(rows=rows, seed=rows).to_csv(data, index=False)
    metadata.write_text(penguin_metadata_text())
    return data, metadata


# -- the command line itself -----------------------------------------------------------------------


def test_every_command_and_option_has_help() -> None:
    def walk(parser: Any, path: str) -> None:
        for action in parser._actions:
            if action.choices and hasattr(action, "_choices_actions"):
                helped = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    assert helped.get(name), f"`{path} {name}` has no help"
                    assert sub.description, f"`{path} {name}` has no description"
                    walk(sub, f"{path} {name}")
            else:
                assert action.help, f"`{path}` option {action.option_strings or action.dest}"

    walk(build(), "lomas-admin")


def test_version_and_help_through_the_console_script() -> None:
    from importlib import metadata

    version = subprocess.run(
        [console_script(), "--version"], capture_output=True, text=True, timeout=60
    )
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout == f"lomas-admin {metadata.version('lomas-client')}\n"
    helped = subprocess.run(
        [console_script(), "datasets", "add", "--help"], capture_output=True, text=True, timeout=60
    )
    assert (helped.returncode, helped.stderr) == (0, "")
    assert "checks that the source can be read" in " ".join(helped.stdout.split())
    assert "--s3-credentials" in helped.stdout


def test_singular_and_plural() -> None:
    assert count(1, "problem") == "1 problem"
    assert count(2, "problem") == "2 problems"
    assert count(0, "user") == "0 users"
    assert count(1, "entry", "entries") == "1 entry"
    assert count(3, "entry", "entries") == "3 entries"


@EMBEDDED
def test_usage_errors_exit_2_and_send_nothing(platform: RunningMesh, tmp_path: Path) -> None:
    name = unique("usage")
    for args, message in [
        (("grants", "add", name, demo.DATASET, "--epsilon", "1"), "give --delta with --epsilon"),
        (("grants", "add", name, demo.DATASET, "--epsilon", "lots", "--delta", "0"), "decimal"),
        (("users", "add", name, "--epsilon", "1", "--delta", "0"), "a budget needs --dataset"),
        (("collections", "drop", "users"), "add --yes to confirm"),
        (("datasets", "add", name, "--s3-bucket", "b", "--metadata", "m.yaml"), "needs --s3-key"),
        (
            ("datasets", "add", name, "--path", "x.csv", "--metadata", str(tmp_path / "no.yaml")),
            "cannot read the metadata file",
        ),
        (("datasets", "add", name, "--path", "x.txt", "--metadata", "m"), "cannot tell the format"),
    ]:
        ran = cli(platform, *args)
        assert (ran.code, ran.out) == (2, ""), (args, ran)
        assert ran.err == f"lomas-admin: error: {ran.err.split('error: ', 1)[1]}"
        assert message in ran.err, (args, ran.err)
    parsed = cli(platform, "users", "frobnicate")
    assert parsed.code == 2 and "invalid choice" in parsed.err
    no_token = run("--target", platform.target, "--token", "", "users", "list")
    assert no_token.code == 2 and "an admin token is required" in no_token.err
    with platform.admin() as admin:
        assert name not in {user.name for user in admin.list_users()}
        assert name not in {dataset.name for dataset in admin.list_datasets()}


# -- users (add_user, add_user_with_budget, del_user, show_user, set_may_query, get_list_of_users) --


@EMBEDDED
def test_users(platform: RunningMesh) -> None:
    plain, funded = unique("plain"), unique("funded")
    added = ok(platform, "users", "add", plain)
    assert added.out == f"added user '{plain}' (researcher, may query)\n"
    assert ok(platform, "users", "add", plain).out == added.out  # the same user again: no change
    again = refused(platform, "users", "add", plain, "--admin")
    assert again.err == f"lomas-admin: ALREADY_EXISTS USER_EXISTS: user '{plain}' already exists\n"
    # add_user_with_budget: the user and a grant in one command.
    with_budget = ok(
        platform,
        "users",
        "add",
        funded,
        "--dataset",
        demo.DATASET,
        "--epsilon",
        "2",
        "--delta",
        "0.001",
        "--json",
    ).json()
    assert with_budget["user"]["name"] == funded
    assert with_budget["grant"]["allocation"] == {"approx_dp": {"epsilon": "2", "delta": "0.001"}}

    listed = ok(platform, "users", "list")
    assert listed.out.startswith("NAME ")
    assert "ROLE        MAY QUERY  CREATED" in listed.out.splitlines()[0]
    row = next(line for line in listed.out.splitlines() if line.startswith(plain))
    assert row.split()[1:3] == ["researcher", "yes"]
    users = ok(platform, "--json", "users", "list").json()
    assert {"name": plain, "role": "ROLE_RESEARCHER", "may_query": True} | {
        "create_time": next(u for u in users if u["name"] == plain)["create_time"]
    } in users
    assert listed.out.rstrip().endswith(f"{len(users)} users")

    shown = ok(platform, "users", "show", funded)
    assert shown.out.startswith(f"user       {funded}\nrole       researcher\nmay query  yes\n")
    assert "PENGUIN  approx-DP   epsilon  2        0      0         2" in shown.out
    assert "                     delta    0.001    0      0         0.001" in shown.out
    shown_json = ok(platform, "users", "show", funded, "--json").json()
    assert shown_json["budgets"][0]["remaining"] == {
        "approx_dp": {"epsilon": "2", "delta": "0.001"}
    }

    # set_may_query: freeze and unfreeze.
    frozen = ok(platform, "users", "freeze", funded, "--reason", "on leave")
    assert frozen.out == f"froze user '{funded}': may not start queries (recorded in 1 ledger)\n"
    assert "may query  no" in ok(platform, "users", "show", funded).out
    budgets = ok(platform, "budgets", funded)
    assert budgets.out.rstrip().endswith(f"frozen (may not start queries): {funded}")
    thawed = ok(platform, "users", "unfreeze", funded, "--json").json()
    assert thawed["user"]["frozen"] is False

    removed = ok(platform, "users", "remove", plain)
    assert removed.out.startswith(f"removed user '{plain}' and their grants")
    gone = refused(platform, "users", "show", plain)
    assert gone.err == f"lomas-admin: NOT_FOUND USER_NOT_FOUND: user '{plain}' does not exist\n"
    # The user is added even when the budget is refused: both are said.
    half = unique("half")
    ran = cli(platform, "users", "add", half, "--dataset", "NOPE", "--epsilon", "1", "--delta", "0")
    assert ran.code == 1 and ran.out == f"added user '{half}' (researcher, may query)\n"
    assert ran.err == (
        "lomas-admin: the grant was refused: NOT_FOUND DATASET_NOT_FOUND: dataset 'NOPE' not found\n"
    )
    admin = unique("admin")
    assert ok(platform, "users", "add", admin, "--admin", "--no-query").out == (
        f"added user '{admin}' (admin, may not query)\n"
    )


# -- datasets (add_dataset, del_dataset, show_dataset, show_metadata, get_list_of_datasets) --------


@EMBEDDED
def test_datasets(platform: RunningMesh, tmp_path: Path) -> None:
    name = unique("DATASET").upper()
    data, metadata = penguin_files(tmp_path / "v1")
    added = ok(platform, "datasets", "add", name, "--path", str(data), "--metadata", str(metadata))
    assert added.out == (
        f"added dataset '{name}' (version 1): csv at {data.resolve()}, 7 columns\n"
    )
    shown = ok(platform, "datasets", "show", name)
    assert shown.out.splitlines()[:4] == [
        f"dataset    {name}",
        "format     csv",
        f"source     {data.resolve()}",
        "version    1",
    ]
    assert "7 columns  species, island, bill_length_mm" in shown.out
    as_json = ok(platform, "datasets", "show", name, "--json").json()
    assert as_json["metadata"]["columns"]["species"]["categories"] == [
        "Adelie",
        "Chinstrap",
        "Gentoo",
    ]
    assert "metadata_json" not in as_json  # an object, not escaped JSON text
    written = yaml.safe_load(metadata.read_text())
    as_yaml = yaml.safe_load(ok(platform, "datasets", "metadata", name).out)
    assert as_yaml["columns"] == written["columns"]
    assert list(as_yaml["columns"]) == list(written["columns"])  # the column order is kept
    assert ok(platform, "datasets", "metadata", name, "--json").json() == as_yaml
    listed = ok(platform, "datasets", "list")
    assert listed.out.splitlines()[0].split() == ["NAME", "FORMAT", "VERSION", "SOURCE"]
    # Columns are as wide as their longest entry among all the platform's datasets.
    row = next(line for line in listed.out.splitlines() if line.startswith(f"{name} "))
    assert row.split() == [name, "csv", "1", str(data.resolve())]
    assert name in {d["name"] for d in ok(platform, "datasets", "list", "--json").json()}

    smaller, _ = penguin_files(tmp_path / "v2", rows=40)
    updated = ok(
        platform, "datasets", "update", name, "--path", str(smaller), "--metadata", str(metadata)
    )
    assert updated.out.startswith(f"updated dataset '{name}' (version 2)")
    removed = ok(platform, "datasets", "remove", name)
    assert removed.out.startswith(f"removed dataset '{name}' and the grants on it")
    gone = refused(platform, "datasets", "show", name)
    assert (
        gone.err == f"lomas-admin: NOT_FOUND DATASET_NOT_FOUND: dataset '{name}' does not exist\n"
    )


@EMBEDDED
def test_a_dataset_whose_source_cannot_be_loaded_is_not_registered(
    platform: RunningMesh, tmp_path: Path
) -> None:
    name = unique("CHECKED").upper()
    data, metadata = penguin_files(tmp_path)
    no_sex = tmp_path / "no_sex.csv"
    make_penguin_like(rows=20).drop(columns=["sex"]).to_csv(no_sex, index=False)
    add = ("datasets", "add", name, "--metadata", str(metadata))
    cases = [
        (
            ("--path", str(tmp_path / "absent.csv")),
            "FAILED_PRECONDITION DATASET_SOURCE_UNAVAILABLE: the file "
            f"{tmp_path / 'absent.csv'} does not exist",
        ),
        (
            ("--path", str(no_sex)),
            "INVALID_ARGUMENT METADATA_INVALID: the metadata names 1 column the data does not "
            "have: 'sex'",
        ),
        (
            ("--path", str(data), "--format", "parquet"),
            "INVALID_ARGUMENT DATASET_FORMAT_INVALID: the file "
            f"{data.resolve()} cannot be read as PARQUET",
        ),
        (
            ("--s3-bucket", "bucket", "--s3-key", "penguin.csv", "--s3-credentials", "nobody"),
            "FAILED_PRECONDITION DATASET_SOURCE_UNAVAILABLE: the executor has no S3 credentials "
            "named 'nobody'",
        ),
        (
            ("--url", "http://127.0.0.1:9/penguin.csv"),
            "FAILED_PRECONDITION DATASET_SOURCE_UNAVAILABLE: the URL "
            "http://127.0.0.1:9/penguin.csv cannot be reached",
        ),
    ]
    for source, message in cases:
        ran = refused(platform, *add, *source)
        assert ran.err.startswith(f"lomas-admin: {message}"), ran.err
    names = {d["name"] for d in ok(platform, "datasets", "list", "--json").json()}
    assert name not in names
    # An update is checked the same way, and a refused one leaves the dataset as it was.
    ok(platform, *add, "--path", str(data))
    ran = refused(
        platform, "datasets", "update", name, "--path", str(no_sex), "--metadata", str(metadata)
    )
    assert "METADATA_INVALID" in ran.err
    shown = ok(platform, "datasets", "show", name, "--json").json()
    assert (shown["version"], shown["source"]["local"]["path"]) == (1, str(data.resolve()))


# -- grants and budgets (add_dataset_to_user, del_dataset_to_user, set_budget_field) ---------------


@EMBEDDED
def test_grants_budgets_and_the_ledger(platform: RunningMesh) -> None:
    user = unique("granted")
    ok(platform, "users", "add", user)
    granted = ok(
        platform, "grants", "add", user, demo.DATASET, "--epsilon", "3", "--delta", "0.0001"
    )
    assert granted.out == (
        f"granted dataset 'PENGUIN' to user '{user}': approx-DP epsilon=3 delta=0.0001\n"
    )
    listed = ok(platform, "grants", "list", "--user", user)
    assert listed.out.splitlines()[0].split() == [
        "USER",
        "DATASET",
        "DEFINITION",
        "ALLOCATION",
        "CREATED",
    ]
    assert f"{user}  PENGUIN  approx-DP   epsilon=3 delta=0.0001" in listed.out
    assert listed.out.rstrip().endswith("1 grant")

    with platform.client(user) as client:
        client.smartnoise_sql.query(COUNT, epsilon=0.5, delta=0)
    budgets = ok(platform, "budgets", user)
    assert budgets.out.splitlines() == [
        "DATASET  DEFINITION  BUDGET   INITIAL  SPENT  RESERVED  REMAINING",
        "PENGUIN  approx-DP   epsilon  3        0.5    0         2.5",
        "                     delta    0.0001   0      0         0.0001",
    ]
    exact = ok(platform, "budgets", user, "--dataset", demo.DATASET, "--json").json()
    assert exact[0]["spent"]["approx_dp"]["epsilon"] == "0.5"

    # set_budget_field initial_epsilon: --epsilon alone keeps delta.
    adjusted = ok(platform, "ledger", "adjust", user, demo.DATASET, "--epsilon", "4.25")
    assert adjusted.out.startswith(
        f"set the allocation of user '{user}' on dataset 'PENGUIN' to epsilon=4.25 delta=0.0001"
    )
    assert "PENGUIN  approx-DP   epsilon  4.25     0.5    0         3.75" in adjusted.out
    # set_budget_field initial_delta: --delta alone keeps epsilon.
    ok(platform, "ledger", "adjust", user, demo.DATASET, "--delta", "0.0002", "--reason", "more")
    ledger = ok(platform, "ledger", "show", user, demo.DATASET, "--json").json()
    assert ledger["allocation"] == {"approx_dp": {"epsilon": "4.25", "delta": "0.0002"}}
    shown = ok(platform, "ledger", "show", user, demo.DATASET)
    assert "entries         " in shown.out and "head hash       " in shown.out
    history = ok(platform, "ledger", "history", user, demo.DATASET)
    kinds = [line.split()[4] for line in history.out.splitlines()[1:-2]]  # after the time
    assert kinds[0] == "allocation" and kinds.count("adjustment") == 2 and "commit" in kinds
    assert history.out.rstrip().endswith(f"{len(kinds)} entries")
    below = refused(platform, "ledger", "adjust", user, demo.DATASET, "--epsilon", "0.1")
    assert "ALLOCATION_BELOW_SPENT" in below.err

    # Other privacy definitions print their own components.
    zcdp, pure = unique("zcdp"), unique("pure")
    ok(platform, "users", "add", zcdp, "--dataset", demo.DATASET, "--rho", "0.125")
    ok(platform, "users", "add", pure, "--dataset", demo.DATASET, "--epsilon", "1", "--pure")
    assert (
        "PENGUIN  zCDP        rho     0.125    0      0         0.125"
        in ok(platform, "budgets", zcdp).out
    )
    assert (
        "PENGUIN  pure-DP     epsilon  1        0      0         1"
        in ok(platform, "budgets", pure).out
    )

    revoked = ok(platform, "grants", "remove", user, demo.DATASET)
    assert revoked.out.startswith(f"revoked the grant of dataset 'PENGUIN' to user '{user}'")
    again = refused(platform, "grants", "remove", user, demo.DATASET)
    assert again.err.startswith(
        f"lomas-admin: NOT_FOUND GRANT_NOT_FOUND: user '{user}' holds no grant on dataset 'PENGUIN'"
    )


# -- archive, caps, ledger verify ------------------------------------------------------------------


@EMBEDDED
def test_archive_caps_and_verify(platform: RunningMesh, tmp_path: Path) -> None:
    user, dataset = unique("archived"), unique("CAPPED").upper()
    data, metadata = penguin_files(tmp_path)
    ok(platform, "datasets", "add", dataset, "--path", str(data), "--metadata", str(metadata))
    ok(platform, "users", "add", user, "--dataset", dataset, "--epsilon", "5", "--delta", "0.001")
    with platform.client(user, dataset=dataset) as client:
        client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=0)
    archive = ok(platform, "archive", "--user", user)
    lines = archive.out.splitlines()
    assert lines[0].split() == ["SUBMITTED", "USER", "DATASET", "STATUS", "COST", "QUERY"]
    assert f"{user}  {dataset}  succeeded  epsilon=1 delta=0  {COUNT}" in lines[1]
    assert lines[-1] == "1 archived query"
    queries = ok(platform, "archive", "--user", user, "--dataset", dataset, "--json").json()
    assert [q["query"]["smartnoise_sql"]["sql"] for q in queries] == [COUNT]
    assert queries[0]["release"].endswith("bytes of Arrow IPC>")

    capped = ok(platform, "caps", "set", dataset, "--epsilon", "20", "--delta", "0.01")
    assert capped.out.splitlines()[:4] == [
        f"dataset    {dataset}",
        "cap        approx-DP epsilon=20 delta=0.01",
        "used       epsilon=1 delta=0",
        "remaining  epsilon=19 delta=0.01",
    ]
    assert ok(platform, "caps", "show", dataset, "--json").json()["used"] == {
        "approx_dp": {"epsilon": "1", "delta": "0"}
    }
    assert (
        ok(platform, "caps", "remove", dataset).out == f"removed the cap of dataset '{dataset}'\n"
    )
    assert ok(platform, "caps", "show", dataset).out == f"dataset '{dataset}' has no cap\n"

    verified = ok(platform, "ledger", "verify")
    assert verified.out.startswith("checked ") and verified.out.endswith(": no problems\n")
    report = ok(platform, "ledger", "verify", "--json").json()
    assert report["problems"] == [] and report["ledgers_checked"] >= 2


@EMBEDDED
def test_unknown_names_are_errors_that_name_them(platform: RunningMesh) -> None:
    user_missing = "lomas-admin: NOT_FOUND USER_NOT_FOUND: user 'Nobody' does not exist\n"
    dataset_missing = "lomas-admin: NOT_FOUND DATASET_NOT_FOUND: dataset 'NOPE' does not exist\n"
    for args, expected in [
        (("budgets", "Nobody"), user_missing),
        (("budgets", "Nobody", "--json"), user_missing),
        (("grants", "list", "--user", "Nobody"), user_missing),
        (("archive", "--user", "Nobody"), user_missing),
        (("users", "show", "Nobody"), user_missing),
        (("ledger", "show", "Nobody", demo.DATASET), user_missing),
        (("ledger", "history", demo.RESEARCHER, "NOPE"), dataset_missing),
        (("datasets", "show", "NOPE"), dataset_missing),
        (("datasets", "metadata", "NOPE"), dataset_missing),
        (("caps", "show", "NOPE"), dataset_missing),
        (("archive", "--dataset", "NOPE"), dataset_missing),
        (("budgets", demo.RESEARCHER, "--dataset", "NOPE"), dataset_missing),
    ]:
        assert refused(platform, *args).err == expected, args
    # The server's own refusals name them too.
    assert "user 'Nobody'" in refused(platform, "users", "freeze", "Nobody").err
    assert "dataset 'NOPE'" in refused(platform, "datasets", "remove", "NOPE").err


def test_normal_use_prints_nothing_on_stderr(platform: RunningMesh, tmp_path: Path) -> None:
    """The console script as an administrator runs it (both deployment modes): no warning, no
    noise on stderr, whatever it prints."""
    token = tmp_path / "admin.token"
    token.write_text(platform.token(demo.ADMIN))
    for args in (
        ["users", "list"],
        ["--json", "datasets", "list"],
        ["budgets", demo.RESEARCHER],
        ["datasets", "metadata", demo.DATASET],
        ["ledger", "verify"],
    ):
        ran = subprocess.run(
            [console_script(), "--target", platform.target, "--token-file", str(token), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (ran.returncode, ran.stderr) == (0, ""), (args, ran.stderr)
        assert ran.stdout.strip(), args
    # The embedded default's token command, which administrators use for the users they add.
    minted = subprocess.run(
        [console_script("lomas-mesh"), "token", "someone", "--data-dir", str(platform.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (minted.returncode, minted.stderr) == (0, ""), minted.stderr
