"""An OpenDP measurement in the parts form: OpenDP's JSON with each distinct constructor sent once.

OpenDP's `dp.serialize` writes a chain built with `then_*` partials by repeating, at each step, the
whole chain before it, so a seven-step measurement on CSV text is 0.6 MB of JSON, and writing it
takes tens of milliseconds. The parts form (which the executor accepts beside OpenDP's own, see
`lomas_executor.opendp_json`) writes each distinct constructor once:

    {"__parts__": [part_0, part_1, ..., part_n]}

Each part is a constructor node as OpenDP writes it (`__function__`, `__module__`, `__kwargs__`,
`__version__`) in which `{"__part__": j}` stands for an earlier part j; the measurement is the last
part. Put every reference back and you have `dp.serialize(measurement)`, key order aside.

The text written here is the executor's canonical form of the measurement: parts numbered in the
order a depth-first walk (keys sorted, each part after its own parts) finishes them, equal parts
written once, sorted keys, no white space.
"""

from __future__ import annotations

import json
from typing import Any

PARTS_KEY = "__parts__"
PART_REFERENCE_KEY = "__part__"


class NotInPartsForm(Exception):
    """The pipeline holds something OpenDP serializes but the parts form does not (send OpenDP's
    own form: the executor refuses what it does not run, such as Polars objects)."""


def parts_json(measurement: Any, version: str) -> str:
    """The parts form of an OpenDP object; `version` is OpenDP's (`opendp.mod.__version__`),
    written on every constructor as `dp.serialize` does. Raises NotInPartsForm."""
    return _PartsWriter(version).text(measurement)


class _PartsWriter:
    def __init__(self, version: str) -> None:
        self._version = version
        self._texts: list[str] = []
        self._indexes: dict[str, int] = {}  # part text -> its index
        self._seen: dict[int, tuple[object, int]] = {}  # id of an OpenDP object -> (it, its index)

    def text(self, measurement: Any) -> str:
        if _described(measurement) is None:
            raise NotInPartsForm(type(measurement).__name__)
        self._encoded(measurement)
        return '{"' + PARTS_KEY + '":[' + ",".join(self._texts) + "]}"

    def _encoded(self, value: Any) -> Any:
        """What OpenDP's JSON encoder writes for `value`, OpenDP objects as part references."""
        if value is None or isinstance(value, str | int | float | bool):
            return value
        if isinstance(value, list):
            return [self._encoded(item) for item in value]
        if isinstance(value, tuple):
            return {"__tuple__": [self._encoded(item) for item in value]}
        if isinstance(value, dict):
            if not all(isinstance(name, str) for name in value):
                raise NotInPartsForm("a dictionary with keys that are not strings")
            if PART_REFERENCE_KEY in value:  # it would read as a reference
                raise NotInPartsForm(f"a dictionary with the key {PART_REFERENCE_KEY}")
            return {name: self._encoded(value[name]) for name in sorted(value)}
        described = _described(value)
        if described is None:
            raise NotInPartsForm(type(value).__name__)
        return {PART_REFERENCE_KEY: self._part(value, described)}

    def _part(self, value: object, described: dict[str, Any]) -> int:
        seen = self._seen.get(id(value))
        if seen is not None:
            return seen[1]
        node = {**described, "__version__": self._version}
        text = json.dumps(self._encoded(node), sort_keys=True, separators=(",", ":"))
        index = self._indexes.get(text)
        if index is None:
            index = self._indexes[text] = len(self._texts)
            self._texts.append(text)
        self._seen[id(value)] = (value, index)  # holds the object: its id stays its own
        return index


def _described(value: object) -> dict[str, Any] | None:
    """The constructor call OpenDP recorded on an object it built (what `dp.serialize` writes)."""
    described = getattr(value, "__opendp_dict__", None)
    return described if isinstance(described, dict) and "__function__" in described else None
