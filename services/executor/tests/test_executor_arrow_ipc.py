from __future__ import annotations

import pandas as pd
import pyarrow as pa

from lomas_executor.arrow_ipc import frame_to_ipc, ipc_to_frame


def test_frames_round_trip_through_an_arrow_ipc_stream() -> None:
    frame = pd.DataFrame(
        {
            "species": ["Adelie", None, "Gentoo"],
            "n": [1, 2, 3],
            "n_nullable": pd.array([1, None, 3], dtype="Int64"),
            "avg": [1.5, float("nan"), 3.25],
            "flag": [True, False, True],
            "at": pd.to_datetime(["2020-01-01", "2021-06-30", None]),
        }
    )
    data = frame_to_ipc(frame)
    assert isinstance(data, bytes)
    # Any Arrow reader decodes it.
    table = pa.ipc.open_stream(data).read_all()
    assert table.column_names == list(frame.columns)
    assert table.schema.field("n").type == pa.int64()
    assert table.column("n_nullable").null_count == 1
    back = ipc_to_frame(data)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["n"].dtype == "int64"


def test_duplicate_names_and_empty_frames_survive() -> None:
    frame = pd.DataFrame([[1.0, 2.0]], columns=["???", "???"])
    back = ipc_to_frame(frame_to_ipc(frame))
    assert list(back.columns) == ["???", "???"]
    assert back.iloc[0].tolist() == [1.0, 2.0]

    empty = pd.DataFrame(
        {"species": pd.Series([], dtype=object), "n": pd.Series([], dtype="int64")}
    )
    back_empty = ipc_to_frame(frame_to_ipc(empty))
    assert list(back_empty.columns) == ["species", "n"]
    assert len(back_empty) == 0
