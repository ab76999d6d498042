"""Several strategies' experiments read side by side, seed by seed (StrategyComparison)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlightning.federated.comparison import StrategyComparison
from kdlightning.stats import mean_interval, paired_difference

CURVES = {  # per strategy and start, the test accuracy by round; seed s adds 0.01 * s after round 0
    ("FedAvg", "fresh"): [0.1, 0.5, 0.8, 0.9],
    ("FedAvg", "consolidated"): [0.7, 0.8, 0.85, 0.9],
    ("FedDF", "fresh"): [0.1, 0.85, 0.9, 0.92],
    ("FedDF", "consolidated"): [0.7, 0.9, 0.92, 0.93],
}


def rows(strategy: str, seeds=(0, 1, 2), scenarios=("iid", "skew")) -> list[dict]:
    return [
        {
            "scenario": scenario,
            "seed": seed,
            "start": start,
            "round": number,
            "test_acc": accuracy + (0.01 * seed if number else 0.0),
            "seconds": 2.0 * number,
            "server_seconds": 0.5 if strategy == "FedDF" and number else 0.0,
        }
        for scenario in scenarios
        for seed in seeds
        for (name, start), curve in CURVES.items()
        if name == strategy
        for number, accuracy in enumerate(curve)
    ]


def comparison(**kwargs) -> StrategyComparison:
    pairs = [("FedDF fresh", "FedAvg fresh"), ("FedDF consolidated", "FedAvg consolidated")]
    return StrategyComparison({"FedAvg": rows("FedAvg"), "FedDF": rows("FedDF", **kwargs)}, 3, pairs=pairs)


def test_each_arm_is_counted_against_the_reference_on_its_own_seed_with_its_starts_collection_round() -> None:
    per_seed = comparison().per_seed()
    for seed in (0, 1, 2):
        best = 0.9 + 0.01 * seed  # FedAvg fresh's, at round 3: the targets are 95, 98 and 99% of it
        fresh, first, final = per_seed[("iid", "FedDF fresh")][seed]
        # FedDF fresh meets every target at round 2 (round 1 is under 95%), no collection round: 2 against 3
        assert (fresh.rounds, fresh.reduction, final) == (2.0, pytest.approx(100 / 3), pytest.approx(best + 0.02))
        assert first == pytest.approx(0.85 + 0.01 * seed)
        consolidated, _, _ = per_seed[("iid", "FedDF consolidated")][seed]
        assert consolidated.rounds == 2.0  # every target at round 1, plus the round collecting the clients' models
        reference, _, _ = per_seed[("iid", "FedAvg fresh")][seed]
        assert reference.rounds == 3.0 and reference.reduction != reference.reduction  # nan: the reference


def test_the_summary_pairs_the_arms_by_seed_and_gives_the_servers_share_of_a_round(tmp_path: Path) -> None:
    compared = comparison()
    compared.write(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    per_seed = compared.per_seed()
    ours = [100 * per_seed[("iid", "FedDF fresh")][s].final for s in (0, 1, 2)]
    theirs = [100 * per_seed[("iid", "FedAvg fresh")][s].final for s in (0, 1, 2)]
    difference = paired_difference(ours, theirs).difference
    assert (
        f"- FedDF fresh - FedAvg fresh: {difference.format(2, ' pp')} in final accuracy, paired over 3 seed(s)"
        in summary
    )
    reductions = [per_seed[("skew", "FedDF consolidated")][s].counts.reduction for s in (0, 1, 2)]
    assert (
        "| FedDF consolidated | 91.00 [88.52, 93.48] | 94.00 [91.52, 96.48] | 2.0 [2.0, 2.0] |" in summary
        and mean_interval(reductions).format(1, "%") in summary
    )
    assert "| FedDF fresh | 2.00 | 0.50 |" in summary and "| FedAvg fresh | 2.00 | 0.00 |" in summary
    untimed = [{k: v for k, v in r.items() if k != "server_seconds"} for r in rows("FedAvg")]
    assert "| FedAvg fresh | 2" not in StrategyComparison({"FedAvg": untimed, "FedDF": rows("FedDF")}, 3).summary()
    assert "2 scenario(s) x seeds [0, 1, 2]" in summary
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_cells_every_arm_finished_are_read() -> None:
    unfinished = [r for r in rows("FedDF") if not (r["seed"] == 2 and r["round"] == 3 and r["scenario"] == "skew")]
    compared = StrategyComparison({"FedAvg": rows("FedAvg"), "FedDF": unfinished}, 3)
    assert compared.cells == [("iid", 0), ("iid", 1), ("iid", 2), ("skew", 0), ("skew", 1)]
    assert compared.seeds == [0, 1, 2]


def test_an_arm_no_run_has_is_refused_naming_the_arms() -> None:
    with pytest.raises(ValueError, match=r"No run has the arm 'FedProx fresh'; the arms are \['FedAvg fresh'"):
        StrategyComparison({"FedAvg": rows("FedAvg")}, 3, pairs=[("FedProx fresh", "FedAvg fresh")])
