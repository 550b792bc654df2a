"""OpenDP's JSON, deserialized with every repeated part built once.

OpenDP serializes a chain built with `then_*` partials by repeating, at each step, the whole chain
before it (as the input domain and the input metric of the step), so a seven-step measurement on
CSV text is 0.6 MB of JSON and `dp.deserialize` calls the constructors of the early steps
thousands of times (about 0.2 s). The parts are immutable OpenDP objects, so a part that appears
again is the same object: this builds each distinct part once, with OpenDP's own hook, and gives
the same measurement. The JSON text is still parsed in full (that part is fast).
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from opendp import mod as opendp_mod


def deserialize_shared(text: str) -> Any:
    """`dp.deserialize(text)`, each distinct part of the tree constructed once."""
    keys: dict[int, Hashable] = {}  # id of a part built during this parse -> its structural key
    built: dict[Hashable, Any] = {}  # structural key -> the part (kept alive: ids stay unique)

    def key_of(value: Any) -> Hashable:
        known = keys.get(id(value))
        if known is not None:
            return known
        if isinstance(value, list):
            return ("list", tuple(key_of(item) for item in value))
        if isinstance(value, dict):  # a dict the hook returned as it was (keyword arguments)
            return ("dict", tuple(sorted((name, key_of(item)) for name, item in value.items())))
        return (type(value).__name__, value)

    def hook(node: dict[str, Any]) -> Any:
        key = ("node", tuple(sorted((name, key_of(item)) for name, item in node.items())))
        if key in built:
            return built[key]
        part = opendp_mod._deserialization_hook(node)
        built[key] = part
        keys[id(part)] = key
        return part

    return json.loads(text, object_hook=hook)
