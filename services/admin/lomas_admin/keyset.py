"""Keyset paging in SQL: a page is the rows after the last key seen, in one unique order.

A list reads `WHERE (filters) AND (k1, k2) > (?, ?) ORDER BY k1, k2 LIMIT n + 1` (`<` and DESC for
newest-first lists), so a page starts right after the previous one however many rows were added or
removed meanwhile, and the database walks an index instead of skipping an offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lomas_admin.records import SortKey
from lomas_common.db import Row, Transaction
from lomas_common.errors import InvalidArgument


@dataclass(frozen=True)
class Keyset:
    """A table's unique sort order for a list: its key columns, their types and the direction."""

    table: str
    columns: tuple[str, ...]
    types: tuple[type[str] | type[int], ...]
    descending: bool = False

    def check(self, after: SortKey | None) -> SortKey | None:
        """`after` if it has this order's shape. Page tokens are bound to their list by a digest
        anyone can compute, so a forged token may still carry a key of the wrong shape."""
        if after is None:
            return None
        if len(after) != len(self.columns) or any(
            type(part) is not kind for part, kind in zip(after, self.types, strict=True)
        ):
            raise InvalidArgument(
                "page_token is not valid for this list", reason="PAGE_TOKEN_INVALID"
            )
        return after

    def key(self, row: Row) -> SortKey:
        return tuple(row[column] for column in self.columns)

    def fetch(
        self,
        tx: Transaction,
        filters: Mapping[str, str],
        after: SortKey | None,
        limit: int,
    ) -> tuple[list[Row], SortKey | None]:
        """Up to `limit` rows matching `filters` (column = value; empty values are not filters)
        after `after`, and the key of the last one when more rows follow."""
        after = self.check(after)
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in filters.items():
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if after is not None:
            placeholders = ", ".join("?" for _ in self.columns)
            clauses.append(
                f"({', '.join(self.columns)}) {'<' if self.descending else '>'} ({placeholders})"
            )
            params.extend(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        direction = " DESC" if self.descending else ""
        order = ", ".join(f"{column}{direction}" for column in self.columns)
        rows = tx.fetchall(
            f"SELECT * FROM {self.table} {where} ORDER BY {order} LIMIT ?", (*params, limit + 1)
        )
        page = rows[:limit]
        more = len(rows) > limit
        return page, (self.key(page[-1]) if more and page else None)
