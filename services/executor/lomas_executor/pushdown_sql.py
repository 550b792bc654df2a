"""SmartNoise-SQL where the data lives: the SQL a database or Spark receives, and its checks.

For a PostgreSQL or Spark dataset, smartnoise-sql's rewritten exact-aggregate subquery runs in the
database (or Spark) and only its rows, one per group, come back to the worker, which adds the
noise. What a researcher writes reaches the database only through that rewritten AST:

1. The query is validated as on any dataset (`smartnoise_sql.estimate_cost`: size ceilings, a
   parse against the metadata, which knows one table, `df`, and the dataset's columns only, and
   the public group keys). Other tables, schemas, functions outside smartnoise-sql's grammar,
   statement stacking and comments are refused there: the parser has no rule for them, and
   comments never reach the AST.
2. The AST is serialized with `df` mapped to the registered table (`serialize`), `AS df` kept so
   that qualified columns (`df.x`) still resolve.
3. The SQL text is checked once more (`check_sent_sql`), with the database's own lexical rules:
   one statement, no comment, no backslash (smartnoise-sql's lexer reads `\\'` inside a string as
   an escaped quote, PostgreSQL as the end of the string: the one place where the two could read
   a literal's end differently), no dollar quote, no cast operator, every name called as a
   function one of smartnoise-sql's grammar, and every FROM naming the registered table or a
   subquery. It runs before any charge (`check_pushdown`, from the engine's cost estimate) and
   again right before the SQL is sent, so a query is never charged and then refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from snsql._ast.ast import Table
from snsql.sql.reader.base import SqlReader
from snsql.sql.reader.pandas import PandasReader

from lomas_common.errors import InvalidQuery
from lomas_executor import smartnoise_sql
from lomas_executor.metadata import TABLE_NAME, DatasetMetadata
from lomas_executor.settings import SqlLimits
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery

# Names that may stand right before "(": smartnoise-sql's functions (its grammar, SqlSmall.g4)
# and the keywords its serialized SQL puts before a parenthesis.
ALLOWED_CALLS = frozenset(
    {
        # aggregates
        "count", "sum", "avg", "var", "variance", "std", "stddev", "stdev", "min", "max",
        "percentile_disc", "percentile_cont",
        # math
        "abs", "ceil", "ceiling", "floor", "sign", "sqrt", "square", "exp", "ln", "log", "log10",
        "log2", "sin", "cos", "tan", "asin", "acos", "atan", "atanh", "degrees", "round", "power",
        "trunc", "truncate", "pi", "random", "rand", "newid",
        # ranking (smartnoise-sql's per-key sampling), strings, dates, conditionals, casts
        "row_number", "rank", "dense_rank", "over", "upper", "lower", "concat", "coalesce", "trim",
        "substring", "position", "char_length", "extract", "dayname", "iif", "choose", "cast",
        "varchar", "nvarchar", "char", "nchar",
        # keywords
        "select", "from", "where", "in", "as", "and", "or", "not", "when", "then", "else", "on",
        "by", "having", "exists", "distinct", "all", "between", "is", "case", "join", "null",
    }
)  # fmt: skip

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<comment>--|/\*|\*/)
    | (?P<operator><=|>=|<>|!=|==|\|\||<=>|[-+*/%<>=(),.!])
    """,
    re.VERBOSE,
)


class PushdownSqlRefused(InvalidQuery):
    """The SQL that would reach the database breaks a rule of `check_sent_sql`."""


def check_sent_sql(sql: str, table: tuple[str, ...]) -> None:
    """Refuse SQL, about to be sent to a database, that is not one plain SELECT on `table` (its
    name's parts, already in the form the database reads: `("s", "t")` or `("lomas_view",)`).
    See the module docstring; raises PushdownSqlRefused."""
    if "\\" in sql:
        raise PushdownSqlRefused(
            "the query contains a backslash, which the database would read differently"
        )
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(sql):
        match = _TOKEN.match(sql, position)
        if match is None:
            raise PushdownSqlRefused(
                f"the query's SQL contains a character the database cannot be sent "
                f"({sql[position]!r} at position {position})"
            )
        position = match.end()
        kind = match.lastgroup or ""
        if kind == "comment":
            raise PushdownSqlRefused(f"the query's SQL contains a comment at position {position}")
        if kind != "space":
            tokens.append((kind, match.group()))
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if kind == "string" and "''" in text[1:-1]:
            raise PushdownSqlRefused("the query has a string literal with a doubled quote")
        if kind == "word" and following[0] == "string":
            # E'...', U&'...', B'...': prefixed strings with their own escape rules.
            raise PushdownSqlRefused("the query uses a prefixed string literal")
        if kind in ("word", "quoted") and following[1] == "(" and text.lower() not in ALLOWED_CALLS:
            raise PushdownSqlRefused(f"the query calls {text!r}, which is not a SQL function")
        if kind == "word" and text.lower() in ("from", "join"):
            _check_relation(tokens[index + 1 :], table)
    first = tokens[0][1].lower() if tokens else ""
    if first != "select":
        raise PushdownSqlRefused("the query is not a SELECT")


# The shape of every registered table's name in `check_pushdown` (the checks read shapes only).
_PLACEHOLDER = ('"lomas"', '"dataset"')


def check_pushdown(query: SmartnoiseSqlQuery, metadata: DatasetMetadata, limits: SqlLimits) -> None:
    """Before any charge: the SQL this (validated) query would send to a database passes
    `check_sent_sql`. Raises PushdownSqlRefused (QUERY_INVALID); no data access."""
    private = smartnoise_sql.metadata_only_reader(query, metadata, limits)
    try:
        subquery, _ = private._rewrite_ast(private.parse_query_string(query.sql))
    except Exception as exc:
        raise smartnoise_sql.refusal(exc, query) from None
    check_sent_sql(serialize(subquery, ".".join(_PLACEHOLDER)), _PLACEHOLDER)


def _check_relation(rest: list[tuple[str, str]], table: tuple[str, ...]) -> None:
    if rest and rest[0][1] == "(":
        return  # a subquery, checked token by token like the rest
    named = [text for _, text in rest[: 2 * len(table) - 1]]
    expected = [part for name in table for part in (name, ".")][:-1]
    if named != expected or (len(rest) > len(named) and rest[len(named)][1] == "."):
        raise PushdownSqlRefused("the query reads a table other than the dataset's")


def quote_name(name: str) -> str:
    """An identifier in double quotes (a double quote in it doubled), as PostgreSQL reads it."""
    return '"' + name.replace('"', '""') + '"'


class PushdownReader(SqlReader):
    """A smartnoise-sql reader that sends the rewritten subquery's SQL to where the data is.

    It keeps the naming rules of the engine that validated the query (`PandasReader.ENGINE`, the
    same as `smartnoise_sql._MetadataOnlyReader`), so the query that runs is the one that was
    priced. `relation` is the registered table as the database names it (quoted parts joined by
    dots); `relation_parts` the same parts for `check_sent_sql`. `send` runs one checked SQL text
    and returns a header row and the result rows. `sent` records every SQL text sent (for tests
    and audits).
    """

    def __init__(
        self,
        relation: str,
        relation_parts: tuple[str, ...],
        send: Callable[[str], list[Any]],
    ) -> None:
        super().__init__(PandasReader.ENGINE)
        self.relation = relation
        self.relation_parts = relation_parts
        self._send = send
        self.sent: list[str] = []

    def serialize(self, query: Any) -> str:
        return serialize(query, self.relation)

    def _execute_ast(self, query: Any, *ignore: object, accuracy: bool = False) -> list[Any]:
        sql = self.serialize(query)
        check_sent_sql(sql, self.relation_parts)
        self.sent.append(sql)
        return self._send(sql)

    def execute(self, query: str, *ignore: object, accuracy: bool = False) -> list[Any]:
        raise RuntimeError("a pushdown reader runs rewritten ASTs only")


def serialize(query: Any, relation: str) -> str:
    """The SQL of a rewritten smartnoise-sql AST with the table `df` read from `relation` (named
    `df` again with AS, unless the query gave it another alias)."""
    tables = [table for table in query.find_nodes(Table) if str(table.name) == TABLE_NAME]
    saved = [(table, table.name, table.alias) for table in tables]
    try:
        for table in tables:
            table.name = relation
            if table.alias is None:
                table.alias = TABLE_NAME
        return str(query)
    finally:
        for table, name, alias in saved:
            table.name, table.alias = name, alias
