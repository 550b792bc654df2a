"""Prices and fingerprints of queries: what the gateway knows of a query before it charges.

An executor prices a query on the dataset's metadata alone (no data) and returns its canonical form
(`lomas_executor.canonical`): the SQL as the engine's parser reads it, exact decimals in one
spelling, JSON with sorted keys. The fingerprint, which keys free replays and single flight, is
taken over that canonical form, so two spellings of one query are one query and nothing else is.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from lomas.common.v1 import dataset_pb2, privacy_pb2, query_pb2
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.peers import AsyncPeer
from lomas_gateway.recent import RecentlyUsed


@dataclass(frozen=True)
class Priced:
    """A query's exact cost and its canonical form."""

    cost: privacy_pb2.PrivacyLoss
    canonical: query_pb2.Query


def query_bytes(query: query_pb2.Query) -> bytes:
    """A query as exactly the bytes given (deterministic serialization), no textual normalisation:
    SQL comments end at a newline, so collapsing white space can turn two queries into one."""
    return query.SerializeToString(deterministic=True)


def _digest(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed parts, so no two different part lists collide by concatenation."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def query_fingerprint(
    subject: str, dataset: dataset_pb2.DatasetDescriptor, canonical: query_pb2.Query
) -> str:
    """What makes two queries "the same" for a free replay: caller, dataset name and version, and
    the query's canonical form."""
    return _digest(
        subject.encode(),
        dataset.name.encode(),
        str(dataset.version).encode(),
        query_bytes(canonical),
    ).hex()


class CostCache:
    """Prices the gateway has already had from an executor, most recently used kept.

    A price is a function of the dataset's descriptor (its metadata above all) and the query alone;
    the key holds both in full (an updated dataset misses) and the caller's subject as well, so an
    entry one caller filled is never consumed by another. Only successful prices are kept.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self._prices: RecentlyUsed[bytes, Priced] = RecentlyUsed(max_entries)

    @staticmethod
    def key(subject: str, dataset: dataset_pb2.DatasetDescriptor, query: query_pb2.Query) -> bytes:
        return _digest(
            subject.encode(), dataset.SerializeToString(deterministic=True), query_bytes(query)
        )

    def get(self, key: bytes) -> Priced | None:
        return self._prices.get(key)

    def put(self, key: bytes, priced: Priced) -> None:
        self._prices.put(key, priced)


class Pricer:
    """Prices queries through an executor, remembering each price per caller, dataset descriptor
    and exact query; concurrent requests for one price (a burst of the same query) share one
    executor call, which outlives any one caller's cancellation."""

    def __init__(self, executor: AsyncPeer[executor_pb2_grpc.ExecutorServiceStub]) -> None:
        self._executor = executor
        self._cache = CostCache()
        self._pending: dict[bytes, asyncio.Future[Priced]] = {}

    def known(
        self, subject: str, descriptor: dataset_pb2.DatasetDescriptor, query: query_pb2.Query
    ) -> Priced | None:
        """The price if an executor already gave it (no call made)."""
        return self._cache.get(CostCache.key(subject, descriptor, query))

    async def price(
        self, subject: str, descriptor: dataset_pb2.DatasetDescriptor, query: query_pb2.Query
    ) -> Priced:
        key = CostCache.key(subject, descriptor, query)
        priced = self._cache.get(key)
        if priced is not None:
            return priced
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._price_remote(key, descriptor, query))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._done(key, done))
        return await asyncio.shield(pending)

    def _done(self, key: bytes, done: asyncio.Future[Priced]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # seen, even when every caller went away before it ended

    async def _price_remote(
        self, key: bytes, descriptor: dataset_pb2.DatasetDescriptor, query: query_pb2.Query
    ) -> Priced:
        response: executor_pb2.EstimateCostResponse = await self._executor.call(
            "EstimateCost", executor_pb2.EstimateCostRequest(dataset=descriptor, query=query)
        )
        # An executor from before canonical forms prices the query as sent.
        canonical = response.canonical_query if response.HasField("canonical_query") else query
        priced = Priced(cost=response.cost, canonical=canonical)
        self._cache.put(key, priced)
        return priced
