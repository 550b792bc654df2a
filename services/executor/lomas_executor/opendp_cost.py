"""The charge of an OpenDP measurement: its privacy map at `max_ids`, as an exact, rounded-up loss.

Pure DP charges epsilon, approximate DP (epsilon, delta), zCDP rho (or (epsilon, delta) at the
caller's `fixed_delta`), a privacy curve (epsilon, delta) at `fixed_delta` (refused without one).
"""

from __future__ import annotations

import math
from decimal import Decimal

import opendp.prelude as dp
from opendp.mod import OpenDPException

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss, PrivacyValueError, engine_cost
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import clean_message, short_text


def measurement_cost(
    measurement: dp.Measurement, fixed_delta: Decimal | None, metadata: DatasetMetadata
) -> PrivacyLoss:
    measure = measurement.output_measure
    try:
        if measure == dp.max_divergence():
            return PrivacyLoss.pure_dp(_decimal(measurement.map(metadata.max_ids), "epsilon"))
        if measure == dp.approximate(dp.max_divergence()):
            epsilon, delta = measurement.map(metadata.max_ids)
            return _approx(epsilon, delta)
        if measure == dp.zero_concentrated_divergence():
            if fixed_delta is None:
                return PrivacyLoss.rho_zcdp(_decimal(measurement.map(metadata.max_ids), "rho"))
            curve = dp.c.make_zCDP_to_approxDP(measurement).map(metadata.max_ids)
            return _approx(curve.epsilon(delta=float(fixed_delta)), fixed_delta)
        if measure == dp.smoothed_max_divergence():
            if fixed_delta is None:
                raise InvalidQuery(
                    "the measurement's privacy loss is a curve: give fixed_delta to charge it as "
                    "(epsilon, delta)"
                )
            curve = measurement.map(metadata.max_ids)
            return _approx(curve.epsilon(delta=float(fixed_delta)), fixed_delta)
        approximate_zcdp = measure == dp.approximate(dp.zero_concentrated_divergence())
        if approximate_zcdp or measure == dp.approximate(dp.smoothed_max_divergence()):
            if fixed_delta is None:
                raise InvalidQuery(
                    "the measurement's privacy loss is a zCDP or curve loss with a delta: give "
                    "fixed_delta to charge it as (epsilon, delta)"
                )
            if approximate_zcdp:
                measurement = dp.c.make_zCDP_to_approxDP(measurement)
            curve, delta = measurement.map(metadata.max_ids)
            epsilon = curve.epsilon(delta=float(fixed_delta))
            return _approx(epsilon, fixed_delta + _decimal(delta, "delta"))
    except InvalidQuery:
        raise
    except (OpenDPException, TypeError, ValueError) as exc:
        raise InvalidQuery(
            f"OpenDP could not compute the privacy loss: {clean_message(exc)}"
        ) from None
    raise InvalidQuery(
        f"unsupported privacy measure {short_text(measure)}: use max divergence (pure DP), approximate "
        "max divergence, zero-concentrated divergence or a privacy curve with fixed_delta"
    )


def _decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidQuery(f"the pipeline's {name} is not a number")
    if not math.isfinite(value):
        raise InvalidQuery(f"the pipeline's {name} is not finite (the noise scale is too small)")
    try:
        return engine_cost(float(value), name=name)
    except PrivacyValueError as exc:
        raise InvalidQuery(f"the query's privacy cost is out of range: {exc}") from None


def _approx(epsilon: object, delta: object) -> PrivacyLoss:
    delta_value = delta if isinstance(delta, Decimal) else _decimal(delta, "delta")
    loss = PrivacyLoss.approx_dp(_decimal(epsilon, "epsilon"), delta_value)
    if loss.delta >= 1:
        raise InvalidQuery("the pipeline's delta must be less than 1")
    return loss
