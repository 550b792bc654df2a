"""OpenDP's JSON, in OpenDP's own form or with its repeated parts sent once, deserialized with every
repeated part built once.

OpenDP serializes a chain built with `then_*` partials by repeating, at each step, the whole chain
before it (as the input domain and the input metric of the step), so a seven-step measurement on
CSV text is 0.6 MB of JSON and `dp.deserialize` calls the constructors of the early steps
thousands of times (about 0.2 s). Two ways out, both giving OpenDP's own measurement:

* `deserialize_shared` takes OpenDP's form as it is: the parts are immutable OpenDP objects, so a
  part that appears again is the same object, built once with OpenDP's own hook (the text is still
  parsed in full).
* The **parts form** sends each distinct constructor once (a few kB for the same measurement):

      {"__parts__": [part_0, part_1, ..., part_n]}

  Each part is one OpenDP constructor node as OpenDP writes it (`__function__`, `__module__`,
  `__kwargs__`, `__version__`) in which `{"__part__": j}` stands for part j, with j smaller than
  the part's own index (so there is no cycle); the measurement is the last part, and every other
  part is used by a later one. Put every reference back and you have OpenDP's JSON of the
  measurement (`measurement_parts` counts the nodes of that tree, so the ceilings of OpenDP's form
  hold).
  The Python client sends this form (`lomas.client.opendp_parts`); `canonical_measurement_json`
  writes either form as the canonical parts form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from typing import Any

from opendp import mod as opendp_mod

from lomas_common.errors import InvalidQuery
from lomas_executor import opendp_model as model

PARTS_KEY = "__parts__"
PART_REFERENCE_KEY = "__part__"
# The start of the parts form (its envelope has one key); any other text is read as OpenDP's form.
_PARTS_FORM = re.compile(r'\s*\{\s*"' + PARTS_KEY + r'"\s*:')


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


# -- the parts form ---------------------------------------------------------------------------------


def is_part_reference(node: object) -> bool:
    return isinstance(node, dict) and PART_REFERENCE_KEY in node


def measurement_parts(tree: Any) -> list[dict[str, Any]] | None:
    """The parts of a measurement in the parts form, checked for shape (None: OpenDP's own form).

    Checks that every part is a constructor node, that every reference is `{"__part__": j}` to an
    earlier part, that every part but the last is used, and that the measurement, references put
    back, has at most `MAX_JSON_NODES` nodes. The allow-list is checked elsewhere, part by part.
    """
    if not isinstance(tree, dict) or PARTS_KEY not in tree:
        return None
    parts = tree[PARTS_KEY]
    if set(tree) != {PARTS_KEY} or not isinstance(parts, list) or not parts:
        raise InvalidQuery(
            f'the OpenDP measurement in the parts form must be {{"{PARTS_KEY}": [...]}} with at '
            "least one part"
        )
    used: set[int] = set()
    # Per part, the nodes `opendp_model.walk` would count in it with its references put back.
    sizes: list[int] = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or "__function__" not in part:
            raise InvalidQuery(
                f"part {index} of the OpenDP measurement is not an OpenDP constructor"
            )
        size = 0
        for _, node in model.walk(part):
            size += 1
            if is_part_reference(node):
                target = _referenced(node, index)
                used.add(target)
                size += sizes[target] - 2  # the reference and its index stand for the whole part
        if size > model.MAX_JSON_NODES:
            raise InvalidQuery(f"the pipeline has more than {model.MAX_JSON_NODES} JSON nodes")
        sizes.append(size)
    unused = set(range(len(parts) - 1)) - used
    if unused:
        raise InvalidQuery(f"part {min(unused)} of the OpenDP measurement is not used")
    return parts


def _referenced(node: dict[str, Any], index: int) -> int:
    target = node[PART_REFERENCE_KEY]
    if set(node) != {PART_REFERENCE_KEY} or isinstance(target, bool) or not isinstance(target, int):
        raise InvalidQuery(f'a part reference must be {{"{PART_REFERENCE_KEY}": <index>}}')
    if not 0 <= target < index:
        raise InvalidQuery(f"part {index} of the OpenDP measurement refers to a later part")
    return target


def build_parts(parts: list[dict[str, Any]]) -> Any:
    """The measurement of checked parts: each part built once, with OpenDP's own hook, in order."""
    return _rebuilt(parts, opendp_mod._deserialization_hook)


def _rebuilt(parts: list[dict[str, Any]], make: Callable[[dict[str, Any]], Any]) -> Any:
    """The last of checked `parts`, each part made once, in order: every JSON object, innermost
    first, becomes `make(object)`, and a reference becomes the part it names, made already."""
    made: list[Any] = []

    def rebuilt(value: Any) -> Any:
        if isinstance(value, dict):
            if PART_REFERENCE_KEY in value:
                return made[value[PART_REFERENCE_KEY]]
            return make({name: rebuilt(item) for name, item in value.items()})
        if isinstance(value, list):
            return [rebuilt(item) for item in value]
        return value

    for part in parts:
        made.append(rebuilt(part))
    return made[-1]


def canonical_measurement_json(text: str) -> str:
    """The canonical parts form of a measurement sent in either form. Other text (the engine
    refuses it) is written as other JSON is, keys sorted and no white space, or kept as it is if
    it is not JSON.

    Every constructor node is a part, equal parts are one part, parts are numbered in the order a
    depth-first walk from the measurement (keys sorted, each part after its own parts) finishes
    them, and each is written with sorted keys and no white space. So one measurement has one
    canonical text whatever its form or the order of its parts, and two texts are equal only if
    their measurements are the same tree of constructors."""
    interned = _Interned()
    try:
        if _PARTS_FORM.match(text):
            parts = measurement_parts(json.loads(text))
            if parts is not None:
                return _canonical_text(interned.parts(parts))
        else:  # OpenDP's own form: equal parts are made one while parsing
            root = json.loads(text, object_hook=interned.opendp_node)
            if isinstance(root, _Part):
                return _canonical_text(root)
    except (ValueError, RecursionError, InvalidQuery):
        pass
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):
        return text


class _Part:
    """One distinct constructor node; `node` holds its arguments with their parts as `_Part`s."""

    __slots__ = ("node", "serial")

    def __init__(self, node: dict[str, Any], serial: int) -> None:
        self.node = node
        self.serial = serial


class _Interned:
    """Constructor nodes made `_Part`s, equal nodes one `_Part` (compared by their text, in which
    a part is its serial number)."""

    def __init__(self) -> None:
        self._by_text: dict[str, _Part] = {}

    def part(self, node: dict[str, Any]) -> _Part:
        text = _compact(node, lambda part: part.serial)  # a serial is never a value's spelling
        known = self._by_text.get(text)
        if known is None:
            known = self._by_text[text] = _Part(node, len(self._by_text))
        return known

    def opendp_node(self, node: dict[str, Any]) -> Any:
        """`json.loads` hook for OpenDP's own form (where a part reference has no place)."""
        if PART_REFERENCE_KEY in node:
            raise ValueError("a part reference in OpenDP's own form")
        return self._node(node)

    def parts(self, parts: list[dict[str, Any]]) -> _Part:
        """The measurement of checked parts of the parts form, as `_Part`s."""
        root: _Part = _rebuilt(parts, self._node)
        return root

    def _node(self, node: dict[str, Any]) -> Any:
        return self.part(node) if "__function__" in node else node


def _compact(value: Any, reference: Callable[[_Part], int]) -> str:
    """`value` as JSON, keys sorted, no white space; each `_Part` in it as a reference to
    `reference(part)`."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        default=lambda part: {PART_REFERENCE_KEY: reference(part)},
    )


def _canonical_text(root: _Part) -> str:
    texts: list[str] = []
    indexes: dict[int, int] = {}  # serial of a part -> its canonical index

    def visit(value: Any) -> None:
        if isinstance(value, _Part):
            if value.serial not in indexes:
                visit(value.node)
                texts.append(_compact(value.node, lambda part: indexes[part.serial]))
                indexes[value.serial] = len(texts) - 1
        elif isinstance(value, dict):
            for name in sorted(value):
                visit(value[name])
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(root)
    return '{"' + PARTS_KEY + '":[' + ",".join(texts) + "]}"
