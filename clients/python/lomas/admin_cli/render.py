"""How `lomas-admin` prints: aligned tables and short sentences for people, JSON for scripts.

Budgets are printed as exact decimals (never floats), metadata as YAML.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from lomas.admin.v1 import resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.client.admin_values import loss_components, source_location
from lomas.client.lomas_formats import metadata_from_json
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2

_DEFINITIONS = {
    privacy_pb2.PRIVACY_DEFINITION_APPROX_DP: "approx-DP",
    privacy_pb2.PRIVACY_DEFINITION_PURE_DP: "pure-DP",
    privacy_pb2.PRIVACY_DEFINITION_RHO_ZCDP: "zCDP",
}
_LOSS_DEFINITIONS = {"approx_dp": "approx-DP", "pure_dp": "pure-DP", "rho_zcdp": "zCDP"}
_FORMATS = {
    dataset_pb2.DATA_FORMAT_CSV: "csv",
    dataset_pb2.DATA_FORMAT_PARQUET: "parquet",
    dataset_pb2.DATA_FORMAT_TABLE: "table",
}
# Characters of a query shown in a table (the whole query is in --json).
QUERY_WIDTH = 60


@dataclass(frozen=True)
class Output:
    """What a command prints: `text` for people, `data` for --json, and its exit code. `problem`
    goes to stderr (with a non-zero `code`)."""

    text: str
    data: Any
    code: int = 0
    problem: str = ""


# -- words and numbers -----------------------------------------------------------------------------


def count(number: int, noun: str, plural: str = "") -> str:
    """ "1 user", "2 users" (`plural` when adding an s is wrong)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def exact(text: str) -> str:
    """A decimal as exact text, without exponent or trailing zeros ("1E-7" -> "0.0000001")."""
    if not text:
        return "0"
    value = Decimal(text)
    return format(value.normalize() if value else Decimal(0), "f")


def loss(value: privacy_pb2.PrivacyLoss) -> str:
    """ "epsilon=1 delta=0.00001" (exact), or "none"."""
    components = loss_components(value)
    if not components:
        return "none"
    return " ".join(f"{name}={exact(str(amount))}" for name, amount in components.items())


def loss_kind(value: privacy_pb2.PrivacyLoss) -> str:
    return _LOSS_DEFINITIONS.get(value.WhichOneof("loss") or "", "")


def definition(value: privacy_pb2.PrivacyDefinition.ValueType) -> str:
    return _DEFINITIONS.get(value, "unknown")


def data_format(value: dataset_pb2.DataFormat.ValueType) -> str:
    return _FORMATS.get(value, "unknown")


def when(timestamp: Timestamp) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def shorten(text: str, width: int = QUERY_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# -- layouts ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns aligned on the widest cell; the last column is not padded."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """ "name     value" lines, names aligned."""
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in pairs)


def yaml_text(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True).rstrip("\n")


# -- resources -------------------------------------------------------------------------------------


def data(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: every field, proto field names, int64 as numbers; a dataset's
    metadata as an object (not JSON text) and an archived release as its size."""
    document = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    if isinstance(message, resources_pb2.Dataset):
        document.pop("metadata_json", None)
        document["metadata"] = metadata_from_json(message.metadata_json)
    if isinstance(message, archive_pb2.ArchivedQuery):
        document["release"] = f"<{len(message.release)} bytes of Arrow IPC>"
    return document


def users_table(users: Sequence[resources_pb2.User]) -> str:
    rows = [
        (user.name, role(user.role), yes_no(user.may_query), when(user.create_time))
        for user in users
    ]
    return table(("NAME", "ROLE", "MAY QUERY", "CREATED"), rows)


def role(value: resources_pb2.Role.ValueType) -> str:
    return "admin" if value == resources_pb2.ROLE_ADMIN else "researcher"


def source_text(source: dataset_pb2.DataSource) -> str:
    """Where the data lives, with an S3 object's endpoint and credentials name."""
    text = source_location(source)
    if source.WhichOneof("location") == "s3":
        extras = [
            f"endpoint {source.s3.endpoint_url}" if source.s3.endpoint_url else "",
            f"credentials {source.s3.credentials_name}" if source.s3.credentials_name else "",
        ]
        text += "".join(f", {extra}" for extra in extras if extra)
    return text


def datasets_table(datasets: Sequence[resources_pb2.Dataset]) -> str:
    rows = [
        (
            dataset.name,
            data_format(dataset.format),
            str(dataset.version),
            source_location(dataset.source),
        )
        for dataset in datasets
    ]
    return table(("NAME", "FORMAT", "VERSION", "SOURCE"), rows)


def budgets_table(ledgers: Sequence[budget_pb2.Ledger], *, with_user: bool = False) -> str:
    """One row per component of each ledger: what was granted, spent, held by queries in flight,
    and what is left, exactly."""
    at_delta = any(ledger.HasField("remaining_at_delta") for ledger in ledgers)
    headers = ["USER"] if with_user else []
    headers += ["DATASET", "DEFINITION", "BUDGET", "INITIAL", "SPENT", "RESERVED", "REMAINING"]
    if at_delta:
        headers.append("REMAINING AS (EPSILON, DELTA)")
    rows = []
    for ledger in ledgers:
        parts = [
            loss_components(ledger.allocation),
            loss_components(ledger.spent),
            loss_components(ledger.reserved),
            loss_components(ledger.remaining),
        ]
        for index, component in enumerate(parts[0]):
            first = index == 0
            row = [ledger.user if first else ""] if with_user else []
            row += [ledger.dataset if first else "", definition(ledger.definition) if first else ""]
            row += [component, *(exact(str(part.get(component, 0))) for part in parts)]
            if at_delta:
                row.append(_at_delta(ledger) if first else "")
            rows.append(row)
    return table(headers, rows)


def _at_delta(ledger: budget_pb2.Ledger) -> str:
    if not ledger.HasField("remaining_at_delta"):
        return ""
    view = ledger.remaining_at_delta
    return f"({exact(view.epsilon)}, {exact(view.delta)})"


def frozen_note(ledgers: Sequence[budget_pb2.Ledger]) -> str:
    frozen = sorted({ledger.user for ledger in ledgers if ledger.frozen})
    if not frozen:
        return ""
    return "frozen (may not start queries): " + ", ".join(frozen)


def metadata_yaml(metadata_json: str) -> str:
    return yaml_text(metadata_from_json(metadata_json))


def join(*parts: str) -> str:
    """Non-empty parts, a blank line between them."""
    return "\n\n".join(part for part in parts if part)


def listing(table_text: str, items: Sequence[Message], noun: str, plural: str = "") -> Output:
    """What a list command prints: its table and how many rows it has ("2 users"); --json, the
    items."""
    return Output(join(table_text, count(len(items), noun, plural)), [data(item) for item in items])


def removal(kind: str, name: str, with_it: str) -> Output:
    """What removing a user or a dataset prints: what went with it (its grants), and that
    ledgers and archived queries keep their history."""
    return Output(
        f"removed {kind} {name!r} and {with_it} (ledgers and archived queries keep their history)",
        {kind: name, "removed": True},
    )


def mapping_lines(values: Mapping[str, list[str]]) -> str:
    return "\n".join(f"{key}: {', '.join(names)}" for key, names in values.items() if names)
