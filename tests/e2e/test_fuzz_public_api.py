"""Property-based fuzzing of every public RPC field: malformed and extreme values never cause INTERNAL,
never move a budget, and leave every service healthy."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mesh_testing import RunningMesh
from rpc_catalog import Rpc, all_rpcs

from lomas.client.admin import approx_dp
from lomas_common.peers import health_check
from lomas_embedded import demo

EXISTING_NAMES = {demo.ADMIN, demo.RESEARCHER, demo.DATASET}

# Values chosen to break parsers, arithmetic and SQL: extremes, non-numbers, injections, huge text.
NASTY_STRINGS = [
    "",
    "NaN",
    "-NaN",
    "Infinity",
    "-inf",
    "1e999999",
    "-1",
    "0",
    "1e-999999",
    "0x10",
    "9" * 400,
    "SELECT COUNT(*) AS n FROM df",
    "SELECT * FROM df",
    "SELECT COUNT(*) FROM df; DROP TABLE users; --",
    "' OR '1'='1",
    "SELECT COUNT(*) AS n FROM df WHERE species = 'x' UNION SELECT name FROM sqlite_master",
    "\x00\x01\x02",
    "../../etc/passwd",
    "{}",
    '{"a": [1, 2, {"b": null}]}',
    "🐧" * 50,
]
INT_EXTREMES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}


def text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY_STRINGS),
        st.text(max_size=40),
        st.integers(1, 200_000).map(lambda n: "x" * n),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ).filter(lambda value: value not in EXISTING_NAMES)  # the admin fuzzer must not delete the demo


def scalar(field: FieldDescriptor, demo_dataset: bool) -> st.SearchStrategy[Any]:
    if field.type in INT_EXTREMES:
        low, high = INT_EXTREMES[field.type]
        return st.one_of(st.sampled_from([low, -1, 0, 1, high]), st.integers(low, high))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_STRING:
        if field.name == "dataset" and demo_dataset:
            return st.one_of(st.just(demo.DATASET), text())
        return text()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=2048)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-5, 10)
    raise AssertionError(f"no strategy for {field.full_name}")


def message(
    descriptor: Descriptor, depth: int = 0, *, demo_dataset: bool = True
) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for a message, each field present or absent, nested messages bounded in depth.
    `demo_dataset`: dataset fields may name the demo dataset (a researcher's calls reach deeper
    with it; an administrator's would legitimately change it, a cap say, which the test forbids)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            fields[field.name] = st.dictionaries(text(), text(), max_size=4)
        elif field.message_type is not None:
            if depth >= 3 or field.message_type.full_name.startswith("google.protobuf."):
                continue
            fields[field.name] = message(field.message_type, depth + 1, demo_dataset=demo_dataset)
        elif field.is_repeated:
            fields[field.name] = st.lists(scalar(field, demo_dataset), max_size=3)
        else:
            fields[field.name] = scalar(field, demo_dataset)
    return st.fixed_dictionaries({}, optional=fields)


def build(descriptor: Descriptor, values: dict[str, Any], target: Any) -> None:
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        oneof = field.containing_oneof
        if oneof is not None and target.WhichOneof(oneof.name) is not None:
            continue  # one member per oneof
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(target, name).update(value)
        elif field.message_type is not None:
            build(field.message_type, value, getattr(target, name))
            getattr(target, name).SetInParent()
        elif field.is_repeated:
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)


PUBLIC_RPCS = [rpc for rpc in all_rpcs() if rpc.public]
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED}


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
@pytest.mark.parametrize("rpc", PUBLIC_RPCS, ids=lambda rpc: rpc.path.rsplit(".", 1)[-1])
def test_public_rpcs_survive_malformed_input(platform: RunningMesh, rpc: Rpc) -> None:
    fuzzer = f"fuzz-{uuid.uuid4().hex[:6]}"
    with platform.admin() as admin:
        admin.add_user(fuzzer)
        # So small that no query can be charged: any budget change is then a bug.
        admin.grant(fuzzer, demo.DATASET, approx_dp("0.000000000001", "0"))
        ledgers_before = {
            user: [str(ledger) for ledger in admin.budgets(user)]
            for user in (fuzzer, demo.RESEARCHER)
        }
    admin_rpc = rpc.service.endswith("AdminService")
    subject = demo.ADMIN if admin_rpc else fuzzer
    metadata = (("authorization", f"Bearer {platform.token(subject)}"),)
    channel = grpc.insecure_channel(platform.target, options=[("grpc.max_send_message_length", -1)])
    seen: set[str] = set()

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(values=message(rpc.method.input_type, demo_dataset=not admin_rpc))
    def one_call(values: dict[str, Any]) -> None:
        request = rpc.request_class()()
        build(rpc.method.input_type, values, request)
        code, reason = rpc.call(channel, request, metadata)
        seen.add(code.name)
        assert code not in FORBIDDEN, f"{rpc.path}: {code.name} {reason} for {request!r:.500}"

    try:
        one_call()
    finally:
        channel.close()
    # The fuzzer may have used up this second's request budget of its caller (the admin, for the
    # admin API): the per-user rate window is one second.
    time.sleep(1.1)
    with platform.admin() as admin:
        ledgers_after = {
            user: [str(ledger) for ledger in admin.budgets(user)]
            for user in (fuzzer, demo.RESEARCHER)
        }
    assert ledgers_after == ledgers_before
    for target in (
        platform.target,
        platform.mesh.admin_target,
        platform.mesh.budget_target,
        platform.mesh.executor_target,
    ):
        with grpc.insecure_channel(target) as health_channel:
            status = health_check(health_channel)(health_pb2.HealthCheckRequest(), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
