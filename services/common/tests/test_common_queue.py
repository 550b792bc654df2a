"""Queue names, task priorities and workload routing: the names workers and the gateway share."""

from __future__ import annotations

import json

import pytest

from lomas_common.queue import (
    MAX_TASK_PRIORITY,
    QueueSettings,
    WorkloadClass,
    parse_workload_classes,
    query_kind_of_task,
    task_priority,
    workload_of,
)


def test_a_users_next_task_waits_behind_their_tasks_in_flight() -> None:
    assert [task_priority(n) for n in (-1, 0, 1, 5)] == [0, 0, 1, 5]
    assert task_priority(MAX_TASK_PRIORITY + 100) == MAX_TASK_PRIORITY


def test_names_are_namespaced_by_the_prefix() -> None:
    settings = QueueSettings("redis://127.0.0.1:6379/0", prefix="mesh1")
    assert (settings.light_queue, settings.heavy_queue) == ("mesh1.light", "mesh1.heavy")
    assert settings.queue_for("smartnoise_sql") == "mesh1.light"
    assert settings.queue_for("diffprivlib") == "mesh1.heavy"
    assert settings.queue_for(None) == settings.queue_for("not-a-kind") == "mesh1.light"
    assert settings.done_channel("q1") == "mesh1:query-done:q1"
    assert settings.done_pattern == "mesh1:query-done:*"
    assert settings.attempts_key("q1") == "mesh1:query-attempts:q1"
    assert settings.timed_out_key("q1") == "mesh1:query-timed-out:q1"
    assert settings.unacked_key == "mesh1:unacked"
    # One Redis list per priority step: step 0 is the bare queue name, as kombu writes it.
    lists = settings.broker_lists("mesh1.light")
    assert len(lists) == MAX_TASK_PRIORITY + 1
    assert lists[0] == "mesh1:mesh1.light"
    assert lists[3] == "mesh1:mesh1.light\x06\x163"


def test_time_limits_and_the_visibility_timeout_are_consistent() -> None:
    settings = QueueSettings("redis://x", task_time_limit_seconds=100)
    assert settings.soft_time_limit_seconds == 95
    assert settings.visibility_timeout == 260
    assert QueueSettings("redis://x", task_time_limit_seconds=3).soft_time_limit_seconds == 1
    with pytest.raises(ValueError, match="must exceed the task time limit"):
        QueueSettings("redis://x", task_time_limit_seconds=100, visibility_timeout_seconds=100)
    with pytest.raises(ValueError, match="at least 1 second"):
        QueueSettings("redis://x", task_time_limit_seconds=0)


def test_workload_classes_parse_from_settings_text() -> None:
    assert parse_workload_classes(" Light, heavy,light ") == (
        WorkloadClass.LIGHT,
        WorkloadClass.HEAVY,
    )
    for text in ("", " , ", "light,gpu"):
        with pytest.raises(ValueError):
            parse_workload_classes(text)
    assert workload_of("opendp") is WorkloadClass.LIGHT
    assert workload_of("smartnoise_synth") is WorkloadClass.HEAVY


def test_the_query_kind_is_read_from_a_task_body_without_trusting_it() -> None:
    body = json.dumps({"queryId": "q", "query": {"opendp": {"measurementJson": "{}"}}})
    assert query_kind_of_task(body) == "opendp"
    assert query_kind_of_task(json.dumps({"query": {"unknown": {}}})) is None
    assert query_kind_of_task(json.dumps({"query": ["opendp"]})) is None
    assert query_kind_of_task("not json") is None
    assert query_kind_of_task("[1]") is None
