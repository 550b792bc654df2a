from __future__ import annotations

import json

import pytest

from lomas.common.v1 import dataset_pb2
from lomas_common.errors import InvalidArgument
from lomas_executor import convert
from lomas_executor.demo import penguin_metadata
from lomas_executor.task_inputs import dataset_of


def _descriptor(version: int = 1, max_ids: int = 1) -> dataset_pb2.DatasetDescriptor:
    metadata = {**penguin_metadata().to_dict(), "max_ids": max_ids}
    return dataset_pb2.DatasetDescriptor(
        name="PENGUIN",
        version=version,
        source=dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path="/data/penguin.csv")),
        format=dataset_pb2.DATA_FORMAT_CSV,
        metadata_json=json.dumps(metadata),
    )


def test_a_descriptor_is_converted_once_and_as_convert_does() -> None:
    first = dataset_of(_descriptor())
    assert first == convert.dataset_from_proto(_descriptor())
    assert dataset_of(_descriptor()) is first  # kept: the same immutable object again


def test_another_version_or_metadata_is_converted_anew() -> None:
    first = dataset_of(_descriptor())
    newer = dataset_of(_descriptor(version=2))
    other = dataset_of(_descriptor(max_ids=2))
    assert newer.version == 2 and newer is not first
    assert other.metadata.max_ids == 2 and other.metadata != first.metadata


def test_an_invalid_descriptor_fails_every_time() -> None:
    invalid = _descriptor()
    invalid.format = dataset_pb2.DATA_FORMAT_TABLE  # a file cannot be a table
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            dataset_of(invalid)
