"""Write the Arrow IPC streams the Go decoder's tests read, with pyarrow (the writer the platform uses).

    .venv/bin/python clients/go/arrowipc/testdata/make_streams.py

The streams are checked in; the expected values are written out in arrowipc_test.go.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent


def write(name: str, table: pa.Table, max_chunksize: int | None = None, **options: object) -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    (HERE / name).write_bytes(sink.getvalue().to_pybytes())


def main() -> None:
    simple = pa.table(
        {
            "species": pa.array(["Adelie", None, "Gentoo", "Chinstrap", ""], pa.string()),
            "bill_length_mm": pa.array([39.1, 39.5, None, -1.5, 0.0], pa.float64()),
            "n": pa.array([3, -2, 0, 2**40, -(2**63)], pa.int64()),
            "flag": pa.array([True, False, None, True, True], pa.bool_()),
            "small": pa.array([0, 255, 7, None, 1], pa.uint8()),
            "tiny": pa.array([-128, 127, -1, 0, None], pa.int8()),
            "ratio": pa.array([0.5, 0.25, None, 1.0, -2.0], pa.float32()),
            "long_text": pa.array(["a", "bc", None, "déf", ""], pa.large_string()),
        }
    )
    write("simple.arrows", simple, max_chunksize=2)  # three record batches: 2, 2 and 1 rows
    write("simple_legacy.arrows", simple, use_legacy_format=True)
    write("simple_lz4.arrows", simple, compression="lz4")
    write("schema_only.arrows", simple.slice(0, 0).select(["species", "n"]))
    nested = pa.table(
        {
            "point": pa.array(
                [{"x": 1, "y": "a"}, None], pa.struct([("x", pa.int32()), ("y", pa.string())])
            ),
            "values": pa.array([[1, 2], [3]], pa.list_(pa.int16())),
            "when": pa.array([0, 1_000_000_000], pa.timestamp("ns")),
            "category": pa.array(["a", "b"]).dictionary_encode(),
            "n": pa.array([10, 20], pa.int32()),
        }
    )
    write("nested.arrows", nested)
    views = pa.table({"view": pa.array(["a", "b"], pa.string_view()), "n": pa.array([1, 2])})
    write("views.arrows", views)


if __name__ == "__main__":
    main()
