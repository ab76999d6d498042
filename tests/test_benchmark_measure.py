"""The benchmarks' measuring: rounds interleaved, each figure's interval and verdict (SPEC §8)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from benchmarks.measure import MIN_REPEATS, Figure, as_json, interleave, paired


def recorder(order: list[str]) -> Callable[[str, float], Callable[[], float]]:
    """Units that note their name in ``order`` when run and return ``seconds``."""

    def unit(name: str, seconds: float) -> Callable[[], float]:
        def run() -> float:
            order.append(name)
            return seconds

        return run

    return unit


def test_units_run_once_a_round_in_an_order_that_rotates() -> None:
    order: list[str] = []
    unit = recorder(order)
    seconds = interleave({"a": unit("a", 1.0), "b": unit("b", 2.0), "c": unit("c", 3.0)}, MIN_REPEATS)
    assert seconds == {"a": [1.0] * 5, "b": [2.0] * 5, "c": [3.0] * 5}
    assert order[:9] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each unit goes first in turn
    with pytest.raises(ValueError, match=">= 5"):
        interleave({"a": unit("a", 1.0)}, MIN_REPEATS - 1)


def test_a_unit_in_slices_is_spread_over_its_round_and_summed() -> None:
    order: list[str] = []
    unit = recorder(order)
    seconds = interleave({"a": unit("a", 0.5), "b": unit("b", 1.5)}, MIN_REPEATS, slices=3)
    assert seconds == {"a": [1.5] * 5, "b": [4.5] * 5}  # three slices a round, summed
    assert order[:6] == ["a", "b", "b", "a", "a", "b"]  # the order rotates slice by slice
    assert len(order) == 2 * 3 * MIN_REPEATS
    with pytest.raises(ValueError, match="`slices` must be >= 1"):
        interleave({"a": unit("a", 1.0)}, MIN_REPEATS, slices=0)


@pytest.mark.parametrize(
    ("values", "target", "at_most", "verdict"),
    [
        ((1.00, 1.02, 1.01, 1.03, 1.00), 1.10, True, "met"),
        ((1.20, 1.25, 1.22, 1.21, 1.24), 1.10, True, "not met"),
        ((1.05, 1.15, 1.08, 1.12, 1.10), 1.10, True, "within noise"),
        ((6.0, 6.5, 7.0, 6.2, 6.8), 5.0, False, "met"),
        ((3.0, 3.5, 3.2, 3.1, 3.4), 5.0, False, "not met"),
        ((4.0, 6.0, 5.0, 4.5, 5.5), 5.0, False, "within noise"),
    ],
)
def test_a_verdict_reads_the_interval_of_the_median_against_the_target(values, target, at_most, verdict) -> None:
    figure = Figure("ratio", values, target=target, at_most=at_most)
    assert figure.verdict == verdict
    low, high = figure.interval
    assert low <= figure.median <= high and min(values) <= low and high <= max(values)
    assert Figure("ratio", values).verdict == ""  # no target, no verdict


def test_a_ratio_is_taken_round_by_round_and_every_round_is_kept() -> None:
    figure = paired("b / a", [2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0], target=2.5, scale=1.0)
    assert figure.values == (2.0,) * 5 and figure.interval == (2.0, 2.0) and figure.verdict == "met"
    assert paired("25 a / b", [1.0] * 5, 5.0, scale=25).median == pytest.approx(5.0)
    with pytest.raises(ValueError, match="5 numerators against 4 denominators"):
        paired("x", [1.0] * 5, [1.0] * 4)
    saved = json.loads(json.dumps({"figure": figure}, default=as_json))["figure"]
    assert saved["values"] == [2.0] * 5 and saved["verdict"] == "met" and saved["bound"] == "at most"
    again = Figure("b / a", tuple(saved["values"]), target=saved["target"])
    assert again.interval == figure.interval  # the JSON holds what recomputes the figure (a seeded bootstrap)
