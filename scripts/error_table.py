"""Print the README's table of error reasons from the registry `lomas.common.v1.ErrorReason`.

    .venv/bin/python scripts/error_table.py     (paste between the markers in README.md)

The proto comments are the source: each value's comment starts with its gRPC code and says what it
means. A test checks that the README names every reason.
"""

from __future__ import annotations

import re
from pathlib import Path

PROTO = Path(__file__).resolve().parent.parent / "protos/lomas/common/v1/error_reason.proto"
_VALUE = re.compile(r"^\s*ERROR_REASON_([A-Z0-9_]+) = \d+;")


def rows() -> list[tuple[str, str, str]]:
    out, comment = [], []
    for line in PROTO.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped.removeprefix("//").strip())
            continue
        match = _VALUE.match(line)
        if match and match.group(1) != "UNSPECIFIED":
            text = " ".join(c for c in comment if not c.startswith("Example:"))
            code, _, meaning = text.partition(": ")
            out.append((match.group(1), code, meaning))
        comment = []
    return out


def main() -> None:
    print("| reason | code | meaning |")
    print("|---|---|---|")
    for reason, code, meaning in rows():
        print(f"| `{reason}` | {code} | {meaning} |")


if __name__ == "__main__":
    main()
