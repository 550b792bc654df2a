"""A task's dataset as the worker's engine takes it, converted once per descriptor per process.

Every task of a dataset carries the same descriptor, and converting it parses, validates and
dumps its metadata again (about half a millisecond, more on a large schema), twice per task: for
the check before data access and for the run. The conversion is a pure function of the
descriptor's bytes and its result is immutable (frozen dataclasses), so a process keeps the
conversions of its recent descriptors. Keeping the same `DatasetMetadata` object also keeps the
hash of its canonical text, which the engine's memos look it up by. A descriptor that fails to
convert is not kept: it fails again, the same way, at its next use.
"""

from __future__ import annotations

import functools

from lomas.common.v1 import dataset_pb2
from lomas_executor import convert
from lomas_executor.engine import DatasetRef

# Distinct dataset versions a worker process keeps converted.
DATASETS_KEPT = 64


def dataset_of(descriptor: dataset_pb2.DatasetDescriptor) -> DatasetRef:
    """`convert.dataset_from_proto(descriptor)`, kept per distinct descriptor."""
    return _dataset(descriptor.SerializeToString(deterministic=True))


@functools.lru_cache(maxsize=DATASETS_KEPT)
def _dataset(serialized: bytes) -> DatasetRef:
    return convert.dataset_from_proto(dataset_pb2.DatasetDescriptor.FromString(serialized))
