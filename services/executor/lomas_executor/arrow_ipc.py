"""Releases on the wire: pandas DataFrames as Arrow IPC streams (`bytes`).

Any Arrow reader (pyarrow, polars, arrow-js, the Arrow R and Java libraries) decodes them. Column
names are kept as they are, duplicates included (smartnoise-sql names every unnamed aggregate
`???`).
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa


def frame_to_ipc(df: pd.DataFrame) -> bytes:
    """Encode a frame (its index is dropped) as one Arrow IPC stream."""
    names = [str(name) for name in df.columns]
    arrays = [pa.array(df.iloc[:, position], from_pandas=True) for position in range(df.shape[1])]
    table = pa.Table.from_arrays(arrays, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def ipc_to_frame(data: bytes) -> pd.DataFrame:
    """Decode an Arrow IPC stream into a frame."""
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        table = reader.read_all()
    arrays = [column.to_pandas() for column in table.columns]
    frame = pd.concat(arrays, axis=1) if arrays else pd.DataFrame(index=pd.RangeIndex(0))
    frame.columns = pd.Index(table.column_names)
    return frame
