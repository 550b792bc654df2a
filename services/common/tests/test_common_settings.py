"""Settings come from LOMAS_ environment variables; a bad value stops the process with its name."""

from __future__ import annotations

import pytest

from lomas_common.settings import ServerSettings, env_float, env_int, env_required, env_str


def test_server_settings_have_defaults_and_read_every_variable() -> None:
    default = ServerSettings.from_env({}, default_port=50051)
    assert default == ServerSettings(
        listen="127.0.0.1:50051",
        max_message_bytes=64 * 1024 * 1024,
        grace_seconds=10.0,
        otel_exporter="none",
        log_level="INFO",
        service_token="",
        threads=8,
    )
    env = {
        "LOMAS_LISTEN": "0.0.0.0:7000",
        "LOMAS_MAX_MESSAGE_BYTES": "1024",
        "LOMAS_GRACE_SECONDS": "2.5",
        "LOMAS_OTEL_EXPORTER": "console",
        "LOMAS_LOG_LEVEL": "DEBUG",
        "LOMAS_SERVICE_TOKEN": "peer-secret",
        "LOMAS_SERVER_THREADS": "3",
    }
    assert ServerSettings.from_env(env, default_port=1) == ServerSettings(
        "0.0.0.0:7000", 1024, 2.5, "console", "DEBUG", "peer-secret", threads=3
    )


def test_empty_numbers_take_the_default_and_bad_ones_name_the_variable() -> None:
    assert env_int({"LOMAS_N": ""}, "N", 7) == 7
    assert env_float({}, "X", 1.5) == 1.5
    assert env_str({"LOMAS_S": "v"}, "S", "d") == "v"
    with pytest.raises(SystemExit, match="LOMAS_N must be an integer"):
        env_int({"LOMAS_N": "1.5"}, "N", 7)
    with pytest.raises(SystemExit, match="LOMAS_X must be a number"):
        env_float({"LOMAS_X": "fast"}, "X", 1.0)
    with pytest.raises(SystemExit, match="LOMAS_SERVER_THREADS must be at least 1"):
        ServerSettings.from_env({"LOMAS_SERVER_THREADS": "0"}, default_port=1)


def test_required_variables_must_be_set_and_not_empty() -> None:
    assert env_required({"LOMAS_TARGET": "host:1"}, "TARGET") == "host:1"
    for env in ({}, {"LOMAS_TARGET": ""}):
        with pytest.raises(SystemExit, match="LOMAS_TARGET must be set"):
            env_required(env, "TARGET")
