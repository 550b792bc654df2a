"""The privacy boundary of SmartNoise-SQL queries: size ceilings and public group keys.

Two kinds of check live here, both run while a query is validated and costed (free, before any
charge), and the second one again where the query runs:

1. **Size ceilings, before parsing** (`check_sql_text`). smartnoise-sql's ANTLR parser and SQLite
   fail, or take seconds, on some texts that are short enough to pass the length limit: 10,000
   nested parentheses take 26 s before a RecursionError, 200 make SQLite's parser overflow, a NUL
   byte or a 400-digit number fails in the engine only after the data has been read. A backslash
   in a quoted literal or name is refused too (QUERY_INVALID): smartnoise-sql's lexer reads `\\'` as an escaped
   quote, SQLite and PostgreSQL as the end of the string, so text the parser took for a literal
   would reach the engine as SQL that was never parsed nor rewritten. One scan of
   the text, following smartnoise-sql's lexer (string literals with backslash escapes, double-quoted
   identifiers, `--` and `/* */` comments), refuses them with QUERY_LIMIT_EXCEEDED, metadata
   `limit` naming the ceiling and `maximum` its value. The ceilings are the fields of `SqlLimits`.

2. **Public group keys** (`plan_group_keys`, `complete_aggregates`). When the metadata's
   `censor_dims` is false, smartnoise-sql releases every group key it finds in the data, unnoised.
   So every GROUP BY key must be a plain column whose key set is public: it declares `categories`,
   or it is boolean (a nullable column adds NULL). Anything else is refused with
   GROUP_KEYS_NOT_PUBLIC. Then the key set of a release must say nothing about the data either: the
   exact aggregates of smartnoise-sql's rewritten subquery are completed, before noise, with a row
   of zero aggregates for every declared key combination the data lacks, rows whose key is not
   declared (a value outside the categories, a NULL in a column not declared nullable) are dropped,
   and the rows come in the declared order. smartnoise-sql then adds noise to every row alike.
   With `censor_dims` true, smartnoise-sql's thresholding (charged with its delta) hides rare keys
   and nothing here applies.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snsql._ast.ast import Query, TableColumn

from lomas_common.errors import InvalidQuery
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.settings import SqlLimits


class QueryLimitExceeded(InvalidQuery):
    """A query beyond one of the `SqlLimits` ceilings (metadata: `limit`, `maximum`)."""

    reason = "QUERY_LIMIT_EXCEEDED"

    def __init__(self, message: str, *, limit: str, maximum: int) -> None:
        super().__init__(message, metadata={"limit": limit, "maximum": str(maximum)})


class GroupKeysNotPublic(InvalidQuery):
    """A GROUP BY key whose values would come from the data (metadata: `column`, when it is one)."""

    reason = "GROUP_KEYS_NOT_PUBLIC"


DEFAULT_LIMITS = SqlLimits()

# Control characters (C0, DEL, C1) other than tab, LF and CR: never part of a meaningful query,
# and SQLite refuses a NUL only after the data has been read.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WORD_EXTRA = "_$"


# -- size ceilings ---------------------------------------------------------------------------------


def check_sql_text(sql: str, limits: SqlLimits = DEFAULT_LIMITS) -> None:
    """Refuse, before any parsing, a query text beyond `limits` (QueryLimitExceeded).

    One linear scan that splits the text the way smartnoise-sql's lexer does, so that parentheses
    and digits inside string literals, quoted identifiers and comments are not counted. Where the
    lexer would not recognise a literal or comment (no closing quote), its opening character counts
    as one token and the scan goes on, so the count is never lower than what the parser would see.
    """
    control = _CONTROL.search(sql)
    if control is not None:
        raise QueryLimitExceeded(
            f"the SQL query contains a control character (code {ord(control.group())}) at "
            f"position {control.start()}; only tab, carriage return and line feed are allowed",
            limit="maxControlCharacters",
            maximum=0,
        )
    n = len(sql)
    i = depth = tokens = 0
    while i < n:
        c = sql[i]
        if c in " \t\r\n":
            i += 1
            continue
        tokens += 1
        _check_ceiling(
            tokens, limits.max_tokens, "maxTokens", "the SQL query has more than {maximum} tokens"
        )
        nxt = sql[i + 1] if i + 1 < n else ""
        if c in "'\"":
            end = _quoted_end(sql, i)
            if end < 0:
                i += 1  # unterminated: the lexer takes the quote alone
                continue
            if "\\" in sql[i:end]:
                # smartnoise-sql's lexer reads \' as a quote inside the literal, SQLite and
                # PostgreSQL as the literal's end: the rest would reach the engine unparsed.
                raise InvalidQuery(
                    f"the SQL query has a backslash in a quoted literal or name (at position "
                    f"{i + sql[i:end].index(chr(92))}): engines read it differently, so it is "
                    "not allowed"
                )
            if c == "'":
                _check_ceiling(
                    end - i - 1,
                    limits.max_string_literal_length,
                    "maxStringLiteralLength",
                    "a string literal of the SQL query is longer than {maximum} characters",
                )
            i = end + 1
        elif c == "-" and nxt == "-":
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
            tokens -= 1  # comments are skipped by the lexer
        elif c == "/" and sql.startswith("/**/", i):
            i += 4
            tokens -= 1
        elif c == "/" and nxt == "*" and i + 2 < n and sql[i + 2] != "+":
            close = sql.find("*/", i + 3)
            if close < 0:
                i += 1  # unterminated: not a comment
                continue
            i = close + 2
            tokens -= 1
        elif c == "(":
            depth += 1
            _check_ceiling(
                depth,
                limits.max_parenthesis_depth,
                "maxParenthesisDepth",
                "the SQL query nests parentheses deeper than {maximum}",
            )
            i += 1
        elif c == ")":
            depth = max(depth - 1, 0)
            i += 1
        elif c.isdigit() or (c == "." and nxt.isdigit()):
            end = _number_end(sql, i)
            _check_ceiling(
                end - i,
                limits.max_numeric_literal_length,
                "maxNumericLiteralLength",
                "a numeric literal of the SQL query is longer than {maximum} characters",
            )
            i = end
        elif c.isalpha() or c in _WORD_EXTRA or ord(c) >= 0xA1:
            i += 1
            while i < n and (sql[i].isalnum() or sql[i] in _WORD_EXTRA or ord(sql[i]) >= 0xA1):
                i += 1
        else:
            i += 1  # an operator or punctuation character


def _check_ceiling(count: int, maximum: int, limit: str, message: str) -> None:
    """Refuse a query whose `count` is above the ceiling `maximum`, named `limit` in the error's
    metadata. `message` may name `{count}` and `{maximum}`: it is formatted only on refusal (the
    scan checks every token)."""
    if count > maximum:
        raise QueryLimitExceeded(
            message.format(count=count, maximum=maximum), limit=limit, maximum=maximum
        )


def _quoted_end(sql: str, start: int) -> int:
    """Index of the quote closing the literal opened at `start`, or -1 (backslash escapes the next
    character; a doubled quote stays inside, as smartnoise-sql's double-quoted form allows)."""
    quote = sql[start]
    i = start + 1
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == "\\":
            i += 2
        elif c == quote:
            if quote == '"' and i + 1 < n and sql[i + 1] == '"':
                i += 2
            else:
                return i
        else:
            i += 1
    return -1


def _number_end(sql: str, start: int) -> int:
    """End of the numeric literal at `start`: digits and points, then an optional exponent."""
    i = start
    n = len(sql)
    while i < n and (sql[i].isdigit() or sql[i] == "."):
        i += 1
    if i < n and sql[i] in "eE":
        j = i + 1
        if j < n and sql[j] in "+-":
            j += 1
        if j < n and sql[j].isdigit():
            while j < n and sql[j].isdigit():
                j += 1
            i = j
    return i


# -- public group keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupKeyPlan:
    """How to complete the exact aggregates of one rewritten subquery over its declared key sets.

    Key k sits in the subquery columns `key_positions[k]` (usually one; more when the query selects
    the key twice) and takes the declared values `key_values[k]`, in the metadata's order (NULL
    last). `filler` is the row of a missing key before its key values are set: 0 in every
    aggregate column (0.0 where the aggregate is a float).
    """

    key_positions: tuple[tuple[int, ...], ...]
    key_values: tuple[tuple[Any, ...], ...]
    filler: tuple[Any, ...]

    def combinations(self) -> int:
        return math.prod(len(values) for values in self.key_values)


def plan_group_keys(
    subquery: Query, metadata: DatasetMetadata, limits: SqlLimits = DEFAULT_LIMITS
) -> GroupKeyPlan | None:
    """Check that `subquery` (smartnoise-sql's rewritten exact-aggregate query) can only release
    public keys, and return how to complete its result (None: nothing to complete).

    With `censor_dims` true smartnoise-sql thresholds the keys: returns None. Otherwise raises
    GroupKeysNotPublic for a key that is not a plain column with a public key set, InvalidQuery for
    a released column that is neither a key nor noised, QueryLimitExceeded for too many key
    combinations.
    """
    if metadata.censor_dims:
        return None
    symbols = subquery._select_symbols
    keys: list[TableColumn] = []
    written = subquery.agg.groupingExpressions if subquery.agg is not None else []
    grouping = subquery._grouping_symbols if subquery.agg is not None else []
    for group, text in zip(grouping, written, strict=True):
        column = group.expression
        if not isinstance(column, TableColumn):
            raise GroupKeysNotPublic(
                f"a GROUP BY key is an expression ({_short(text)}), not a column: group by "
                "columns that declare their categories in the metadata, or turn on censor_dims "
                "so keys are thresholded (costs delta)"
            )
        if all(column != key for key in keys):  # GROUP BY k, k groups by k once
            keys.append(column)
    key_values = [_public_key_set(key.colname, metadata) for key in keys]
    positions: list[list[int]] = [[] for _ in keys]
    filler: list[Any] = []
    for i, symbol in enumerate(symbols):
        if symbol.mechanism is not None:
            filler.append(0 if symbol.expression.type() == "int" else 0.0)
            continue
        matches = [k for k, key in enumerate(keys) if symbol.expression == key]
        if not symbol.is_grouping_column or not matches:
            raise InvalidQuery(
                f"the column {symbol.name!r} would be released without noise: only GROUP BY "
                "columns and aggregates can be selected"
            )
        positions[matches[0]].append(i)
        filler.append(None)
    for key, slots in zip(keys, positions, strict=True):
        if not slots:
            # The release would show one row per key without saying which: still the key count.
            raise InvalidQuery(
                f"the GROUP BY column {key.colname!r} is not part of the rewritten query's "
                "output, so its rows could not be completed: select it as well"
            )
    if not keys:
        return None  # one row of aggregates, whatever the data
    plan = GroupKeyPlan(
        key_positions=tuple(tuple(slots) for slots in positions),
        key_values=tuple(key_values),
        filler=tuple(filler),
    )
    _check_ceiling(
        plan.combinations(),
        limits.max_group_key_combinations,
        "maxGroupKeyCombinations",
        "the GROUP BY keys have {count} combinations of declared categories, more than {maximum}",
    )
    return plan


def _public_key_set(name: str, metadata: DatasetMetadata) -> tuple[Any, ...]:
    """A column's declared key values, as SQLite returns them (booleans as 0 and 1)."""
    if name not in metadata.column_names:
        raise GroupKeysNotPublic(
            f"the GROUP BY column {name!r} is not in the metadata", metadata={"column": name}
        )
    column = metadata.column(name)
    if column["type"] == "boolean":
        values: tuple[Any, ...] = (0, 1)
    elif "categories" in column:
        values = tuple(column["categories"])
    else:
        raise GroupKeysNotPublic(
            f"the GROUP BY column {name!r} ({column['type']}) declares no categories, so its keys "
            "would come from the data: declare its categories in the metadata, or turn on "
            "censor_dims so keys are thresholded (costs delta)",
            metadata={"column": name},
        )
    return (*values, None) if column.get("nullable", False) else values


def complete_aggregates(
    exact: Sequence[Sequence[Any]], plan: GroupKeyPlan, max_rows: int | None = None
) -> list[Any]:
    """`exact` (a header row, then rows) with exactly one row per declared key combination.

    Rows of the data keep their values; missing combinations get `plan.filler`; rows whose key is
    not declared are dropped. The order is the declared one, so that not even the position of a
    row tells whether the data had it. `max_rows` keeps only the first combinations (for dry runs,
    where the rows only need to exercise the engine).
    """
    header, rows = exact[0], exact[1:]
    first = [slots[0] for slots in plan.key_positions]
    present: dict[tuple[Any, ...], Sequence[Any]] = {}
    for row in rows:
        present[tuple(row[i] for i in first)] = row
    completed: list[Any] = [header]
    for combination in itertools.islice(itertools.product(*plan.key_values), max_rows):
        found = present.get(combination)
        if found is not None:
            completed.append(found)
            continue
        filled = list(plan.filler)
        for slots, value in zip(plan.key_positions, combination, strict=True):
            for position in slots:
                filled[position] = value
        completed.append(tuple(filled))
    return completed


class CompletingReader:
    """The reader smartnoise-sql runs the exact-aggregate subquery on, completing its result.

    Stateless beyond one query's plan, so a fresh one per query wraps the shared reader.
    """

    def __init__(self, reader: Any, plan: GroupKeyPlan, max_rows: int | None = None) -> None:
        self._reader = reader
        self._plan = plan
        self._max_rows = max_rows

    def _execute_ast(self, query: Query, *args: Any, **kwargs: Any) -> list[Any]:
        exact = self._reader._execute_ast(query, *args, **kwargs)
        return complete_aggregates(exact, self._plan, self._max_rows)


def _short(expression: object, limit: int = 80) -> str:
    text = str(expression)
    return text if len(text) <= limit else text[: limit - 3] + "..."
