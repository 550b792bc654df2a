"""Response padding: when a data-dependent response may leave (`ResponsePadding`)."""

from __future__ import annotations

import asyncio
import time

import pytest

from lomas_gateway.limits import ResponsePadding


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0.01, 0.5), (0.49, 0.5), (0.5, 0.5), (0.51, 0.75), (0.74, 0.75), (1.3, 1.5)],
)
def test_target_is_the_minimum_then_whole_quanta(elapsed: float, expected: float) -> None:
    assert ResponsePadding(0.5, 0.25).target(elapsed) == pytest.approx(expected)


def test_either_setting_alone_pads_and_none_does_not() -> None:
    assert ResponsePadding(0.5, 0).target(0.7) == 0.7  # past the minimum: as it is
    assert ResponsePadding(0, 0.2).target(0.05) == pytest.approx(0.2)
    assert not ResponsePadding().enabled
    assert ResponsePadding().target(0.123) == 0.123


def test_padded_holds_returns_and_errors_alike() -> None:
    padding = ResponsePadding(0.2, 0.1)

    async def timed(fail: bool) -> float:
        start = time.monotonic()
        try:
            async with padding.padded():
                if fail:
                    raise ValueError("refused")
        except ValueError:
            pass
        return time.monotonic() - start

    for fail in (False, True):
        assert asyncio.run(timed(fail)) >= 0.2


def test_hold_waits_only_the_rest() -> None:
    start = time.monotonic()
    asyncio.run(ResponsePadding(0.3, 0).hold(elapsed=0.2))
    waited = time.monotonic() - start
    assert 0.1 <= waited < 0.3
