"""Canonical queries: one spelling per query, so that two spellings of one query are one query.

The gateway keys free replays and single flight on a query's fingerprint; the fingerprint is taken
over the canonical form built here. Two queries get one canonical form only when the engine will
run them alike:
- SQL goes through smartnoise-sql's own parser and is printed back from its syntax tree: keyword
  case, white space, comments, a trailing semicolon and doubled parentheses go; identifiers stay as
  written (smartnoise-sql compares them as written) and string literals are never altered. Numbers
  are printed as the parser reads them, which is what runs.
- Privacy parameters are exact decimals: 0.7, 0.70 and 7e-1 are one value.
- OpenDP JSON is compared with its keys sorted and without white space.

`convert.canonical_query` puts these together on the wire form of a query.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from snsql._ast.expression import NestedExpression
from snsql._ast.expressions.logical import NestedBoolean

_NESTED = (NestedExpression, NestedBoolean)


def canonical_sql(parsed: Any) -> str:
    """The canonical text of a parsed query (smartnoise-sql's AST), without doubled parentheses
    or parentheses around a whole WHERE or HAVING condition. Unwraps the tree it is given."""
    _unwrap_doubled(parsed)
    for clause in (parsed.where, parsed.having):
        if clause is not None:
            while isinstance(clause.condition, _NESTED):
                clause.condition = clause.condition.expression
    return str(parsed)


def _unwrap_doubled(node: Any, seen: set[int] | None = None) -> None:
    """Replace `((x))` by `(x)` everywhere in the syntax tree below `node` (only nodes of
    smartnoise-sql's AST are walked, each once: a node may refer to the metadata)."""
    seen = set() if seen is None else seen
    if not _is_ast(node) or id(node) in seen:
        return
    seen.add(id(node))
    for name, child in list(vars(node).items()):
        items = child if isinstance(child, list) else None
        if items is not None:
            for index, item in enumerate(items):
                items[index] = _unwrapped(item)
                _unwrap_doubled(items[index], seen)
        else:
            unwrapped = _unwrapped(child)
            if unwrapped is not child:
                setattr(node, name, unwrapped)
            _unwrap_doubled(unwrapped, seen)


def _is_ast(node: Any) -> bool:
    return type(node).__module__.startswith("snsql._ast") and hasattr(node, "__dict__")


def _unwrapped(node: Any) -> Any:
    while isinstance(node, _NESTED) and isinstance(node.expression, _NESTED):
        node = node.expression
    return node


def canonical_decimal(text: str) -> str:
    """An exact decimal in one spelling ("0.70", "7e-1" and "0.7" are all "0.7"); text that is not
    a decimal is kept as it is (the engine refuses it)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return text
    if not value.is_finite():
        return text
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def canonical_json(text: str) -> str:
    """JSON with sorted keys and no white space; text that is not JSON is kept as it is."""
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return text
