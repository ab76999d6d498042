"""The study pipeline: every run recorded, resumable, reproducible, summarised from its results."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from kdlightning import DataPartitioningKD, DeepMutualLearning, VanillaKD
from kdlightning.data import Digits, DirichletPartitioner, IIDPartitioner, LabelSkewPartitioner
from kdlightning.methods import member_error
from kdlightning.models import MLP
from kdlightning.reporting import is_failed, paired_gains, read_csv, render_guidance_page, render_summary, summarize
from kdlightning.study import Study
from kdlightning.study.pretraining import ROLES
from kdlightning.tuning import TuneOptions

QUICK = ["--seeds=[0]", "--pretrain_epochs=1", "--epochs=1", "--progress=false"]
"""`kdl study` arguments of a one-seed, one-epoch study."""
SMALL_GRID = TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.1, 0.9]})

SCENARIOS = [IIDPartitioner(), DirichletPartitioner(alpha=0.5)]


def study(out: Path, methods: dict | None = None, **kwargs) -> Study:
    options = {
        "student": partial(MLP, in_features=64, hidden_sizes=(8,)),
        "teacher": partial(MLP, in_features=64, hidden_sizes=(32,)),
        "methods": methods
        if methods is not None
        else {"vanilla_kd": VanillaKD, "dml": DeepMutualLearning, "dpkd": DataPartitioningKD},
        "scenarios": SCENARIOS,
        "seeds": [0, 1],
        "num_parties": 3,
        "pretrain_epochs": 2,
        "epochs": 2,
        "out": str(out),
        "tuned_kd": False,
    }
    options.update(kwargs)
    return Study(**options)


def test_every_run_is_recorded_from_the_same_pretrained_start(tmp_path: Path) -> None:
    rows = study(tmp_path).run(progress=False)
    assert len(rows) == 2 * 2 * 4  # scenarios x seeds x (control + 3 methods)
    assert {r["method"] for r in rows} == {"student_only", "vanilla_kd", "dml", "dpkd"}
    for scenario in ("iid", "dirichlet(alpha=0.5)"):
        for seed in ("0", "1"):
            group = [r for r in rows if r["scenario"] == scenario and str(r["seed"]) == seed]
            assert len({float(r["acc_before"]) for r in group}) == 1  # one start for every method
            (control,) = [r for r in group if r["method"] == "student_only"]
            assert control["gain_over_control_pp"] == 0.0
    assert len(list((tmp_path / "pretrained").glob("*.pt"))) == 2 * 2 * 2  # one teacher, one student each
    written = read_csv(tmp_path / "results.csv")
    assert [r["method"] for r in written] == [r["method"] for r in rows]
    assert (
        (tmp_path / "summary.md")
        .read_text()
        .endswith(render_summary(written, tuned=[], untuned=["vanilla_kd", "dml", "dpkd"], control="student_only"))
    )
    assert (tmp_path / "guidance.md").read_text() == render_guidance_page(written, tuned=[], control="student_only")


@pytest.mark.parametrize("batched", [False, True])
def test_a_killed_study_resumes_without_redoing_finished_runs(tmp_path: Path, batched: bool) -> None:
    calls = {"n": 0}

    def flaky(student, teacher, num_classes):
        calls["n"] += 1
        if calls["n"] == 1 + 3:  # the study's construction builds each method once to check it
            raise KeyboardInterrupt  # killed during the third KD run
        return VanillaKD(student, teacher, num_classes)

    with pytest.raises(KeyboardInterrupt):
        study(tmp_path, methods={"vanilla_kd": flaky}, batched=batched).run(progress=False)
    finished = read_csv(tmp_path / "results.csv")
    # iid: 2 seeds x (control, KD); dirichlet seed 0: its control, unless it trains with the killed KD run
    assert len(finished) == (4 if batched else 5)
    with open(tmp_path / "results.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == len(finished) + 1  # header + complete rows, no partial line
    assert not list(tmp_path.glob(".*.tmp"))

    rows = study(tmp_path, methods={"vanilla_kd": flaky}, batched=batched).run(progress=False)
    assert len(rows) == 8
    assert calls["n"] == 4 + 1 + 2  # the check, then only the killed KD run and the KD run after it ran
    assert [r["acc_after"] for r in rows[: len(finished)]] == [r["acc_after"] for r in finished]


def test_a_batched_study_gives_the_rows_of_separate_fits(tmp_path: Path) -> None:
    """Each cell as batched members: the same runs, and each member's accuracy that of its own fit (float32 noise).

    Seed 1: the cell's seed, not a default of 0, must split and shuffle the data of every fit.
    """
    options = {"scenarios": [DirichletPartitioner(alpha=0.5)], "seeds": [1], "tuned_kd": True, "tuning": SMALL_GRID}
    apart = study(tmp_path / "apart", batched=False, **options).run(progress=False)
    together = study(tmp_path / "batched", **options).run(progress=False)
    apart, together = ({r["method"]: r for r in rows} for rows in (apart, together))
    assert {m: r["class"] for m, r in together.items()} == {m: r["class"] for m, r in apart.items()}
    for method, a in apart.items():
        assert a["acc_before"] == together[method]["acc_before"]
        assert float(together[method]["acc_after"]) == pytest.approx(float(a["acc_after"]), abs=0.01), method
    tuned = [json.loads(rows["tuned_kd"]["hyperparameters"]) for rows in (apart, together)]
    assert [t["trials"] for t in tuned] == [4, 4]
    trials = [
        read_csv(tmp_path / run / "tuning" / "dirichlet-alpha-0.5-seed1" / "trials.csv") for run in ("apart", "batched")
    ]
    by_point = [{(t["temperature"], t["alpha"]): float(t["val/acc"]) for t in rows} for rows in trials]
    assert by_point[1] == pytest.approx(by_point[0], abs=0.03)  # each point validated as its own trial
    before = [
        json.loads((tmp_path / run / "tuning" / "dirichlet-alpha-0.5-seed1" / "best.json").read_text())
        for run in ("apart", "batched")
    ]
    assert before[0]["val_before"] == before[1]["val_before"]  # the student before, on the same validation split


def test_a_batched_study_pretrains_each_role_in_one_fit_as_separate_fits_would(tmp_path: Path, monkeypatch) -> None:
    fitted: list[str] = []
    fit = L.Trainer.fit

    def recording(self, model, *args, **kwargs):
        fitted.append(type(model).__name__)
        return fit(self, model, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", recording)
    cells = [(scenario, seed) for scenario in SCENARIOS for seed in (0, 1)]
    together = study(tmp_path / "batched", pretrain_epochs=3)
    together.pretraining.pretrain_cells(cells)
    assert fitted == ["OwnDataMembers", "OwnDataMembers"]  # the 4 students, then the 4 teachers
    assert len(list((tmp_path / "batched" / "pretrained").glob("*.pt"))) == 2 * len(cells)
    apart = study(tmp_path / "apart", pretrain_epochs=3, batched=False)
    for role in ROLES:
        for scenario, seed in cells:
            expected = apart.pretraining.pretrained(role, scenario, seed).state_dict()
            got = together.pretraining.pretrained(role, scenario, seed).state_dict()  # read back from its file
            for key, value in expected.items():
                assert (got[key] - value).abs().max() <= 1e-5, (role, str(scenario), seed, key)
    assert fitted.count("StudentOnly") == 2 * len(cells)  # the separate study's own fits; the batched one made none
    together.pretraining.pretrain_cells(cells)
    assert fitted.count("OwnDataMembers") == 2  # every network saved: nothing trained again


def test_a_method_with_its_own_optimizer_or_scheduler_is_fitted_apart(tmp_path: Path) -> None:
    import torch

    faster = partial(VanillaKD, optimizer=partial(torch.optim.Adam, lr=0.01))
    plateau = partial(
        VanillaKD, lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=1)
    )  # steps on val/loss: its run validates
    methods = {"vanilla_kd": VanillaKD, "faster": faster, "plateau": plateau}
    runner = study(tmp_path, methods=methods, scenarios=[IIDPartitioner()], seeds=[0])
    assert runner.cells().members == {"student_only", "vanilla_kd"}
    assert "has another `optimizer`" in member_error(
        faster(MLP(in_features=64), MLP(in_features=64), 10),
        like=(VanillaKD(MLP(in_features=64), MLP(in_features=64), 10)),
    )
    rows = runner.run(progress=False)
    assert sorted(r["method"] for r in rows) == ["faster", "plateau", "student_only", "vanilla_kd"]
    assert all(float(r["acc_after"]) > 0 for r in rows)


def test_the_same_seed_gives_the_same_results(tmp_path: Path) -> None:
    a = study(tmp_path / "a", seeds=[3]).run(progress=False)
    b = study(tmp_path / "b", seeds=[3]).run(progress=False)
    assert [(r["method"], r["acc_before"], r["acc_after"]) for r in a] == [
        (r["method"], r["acc_before"], r["acc_after"]) for r in b
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": {}}, "methods"),
        ({"methods": {"tuned_kd": VanillaKD}}, "tuned_kd"),
        ({"methods": {"student_only": VanillaKD}}, "student_only"),
        ({"tuned_kd": True, "tuning": TuneOptions(grid={})}, "grid"),
        ({"tuned_kd": True, "tuning": TuneOptions(grid={"temperature": [0.0]})}, "temperature"),
        ({"tuned_kd": True, "tuning": TuneOptions(grid={"lr": [0.1]})}, "lr"),
        ({"seeds": []}, "seeds"),
        ({"teacher_party": 0}, "teacher_party"),
        ({"epochs": 0}, "epochs"),
        ({"scenarios": [LabelSkewPartitioner(classes_per_party=2)], "num_parties": 3}, "classes_per_party"),
        ({"seeds": [0, 0, 1]}, r"`seeds`.*\[0\]"),
        ({"scenarios": [IIDPartitioner(), IIDPartitioner()]}, "`scenarios`.*iid"),
        ({"methods": {"kd": partial(VanillaKD, temperature=-1.0)}}, "`temperature`"),
        ({"methods": {"dml": partial(DeepMutualLearning, alpha=2.0)}}, "`alpha`"),
        (
            {"tuned_kd": True, "tuning": TuneOptions(grid={"temperature": [0.0, 1.0]})},
            r"`tuning\.grid\.temperature` must be a finite number > 0, got 0\.0",
        ),
        (
            {"tuned_kd": True, "tuning": TuneOptions(grid={"alpha": [0.5, 1.5]})},
            r"`tuning\.grid\.alpha` must lie in \[0, 1\]",
        ),
        ({"batch_size": 0}, "`batch_size` must be >= 1"),
        ({"val_fraction": 1.5}, r"`val_fraction` must lie in \(0, 1\)"),
        ({"trainer": {"gradient_clip_val": 0.5}}, r"`trainer\.gradient_clip_val: 0\.5` cannot apply to `methods\.dml`"),
        (
            {"trainer": {"accumulate_grad_batches": 2}},
            r"`trainer\.accumulate_grad_batches: 2` cannot apply to `methods.dml`",
        ),
    ],
)
def test_bad_studies_fail_before_any_training(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        study(tmp_path / "out", **kwargs).run(progress=False)
    assert not (tmp_path / "out").exists()  # nothing written: no study.json, no pre-trained network


def test_a_text_data_set_is_refused_before_any_training(tmp_path: Path) -> None:
    from kdlightning.data import HFDataset

    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\n" + "".join(f"sample {i} words,{i % 2}\n" for i in range(40)))
    dataset = HFDataset("csv", data_files={"train": str(texts)}, input_column="text", test_split=None)
    with pytest.raises(ValueError, match=r"`dataset` HFDataset holds text.*tokenizer"):
        study(tmp_path / "out", dataset=dataset).check()
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_is_named_before_anything_is_written(tmp_path: Path) -> None:
    from kdlightning.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=r"`out` '.*a-file/study' cannot be written: .*Give another `--out`"):
        study(blocker / "study", methods={"vanilla_kd": VanillaKD}).run(progress=False)
    with pytest.raises(SystemExit) as exited:
        main(["study", "--out", str(blocker / "study"), *QUICK])
    assert exited.value.code == 1  # one line, no traceback (the message is checked above)


def test_a_corrupt_pretrained_network_is_named_and_trained_again(tmp_path: Path) -> None:
    first = study(tmp_path, methods={"vanilla_kd": VanillaKD}, seeds=[0], scenarios=[IIDPartitioner()])
    rows = first.run(progress=False)
    saved = sorted((tmp_path / "pretrained").glob("student-*.pt"))
    assert len(saved) == 1
    good = torch.load(saved[0], weights_only=True)
    data = saved[0].read_bytes()
    saved[0].write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "results.csv").unlink()  # the runs are redone: they read the pre-trained student again
    again = study(tmp_path, methods={"vanilla_kd": VanillaKD}, seeds=[0], scenarios=[IIDPartitioner()])
    with pytest.warns(UserWarning, match=f"Ignoring the pre-trained weights '.*{saved[0].name}'.*trained again"):
        rerun = again.run(progress=False)
    retrained = torch.load(saved[0], weights_only=True)  # retrained as it was first trained, and written over
    assert all(torch.equal(retrained[key], value) for key, value in good.items())
    assert [r["acc_after"] for r in rerun] == [r["acc_after"] for r in rows]


def test_kdl_study_runs_the_embedded_default_with_overrides(tmp_path: Path, capsys) -> None:
    from kdlightning.cli import main, run

    assert main(["study", "--out", str(tmp_path / "first"), *QUICK, "--seeds=[0]", "--tuned_kd=false"]) is None
    capsys.readouterr()  # the console script returns nothing (sys.exit(main()) must exit 0)
    rows = run(["study", "--out", str(tmp_path), *QUICK, "--tuning.grid={temperature: [4.0], alpha: [0.5, 0.9]}"])
    assert len(rows) == 6 * 5  # the 6 default scenarios x (control + vanilla_kd, dml, dpkd, tuned_kd)
    scenarios = list(dict.fromkeys(str(r["scenario"]) for r in rows))
    assert len(scenarios) == 6 and {"label_skew(classes_per_party=2)", "quantity_skew(beta=1)"} <= set(scenarios)
    methods = ("student_only", "vanilla_kd", "dml", "dpkd", "tuned_kd")
    gains = summarize(read_csv(tmp_path / "results.csv"))  # every cell from its one seed
    assert set(gains) == {(s, m) for s in scenarios for m in methods}
    assert all(cell.n == 1 and not cell.has_bounds for cell in gains.values())
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"plot:     {tmp_path / 'gains.png'}  (the gains per method and scenario)"
    header = next(i for i, line in enumerate(out) if line.startswith("scenario "))
    assert [line.split()[0] for line in out[header + 1 : header + 7]] == scenarios  # one line per scenario


def test_every_study_config_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/study/*.yaml build a Study (checked without training)."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from text_assets import stand_in_minilm

    monkeypatch.chdir(tmp_path)  # the text configs read models/all-MiniLM-L6-v2
    stand_in_minilm(tmp_path)

    root = Path(__file__).resolve().parents[2] / "configs" / "study"
    paths = sorted(root.glob("*.yaml"))
    assert paths
    for path in paths:
        parser = ArgumentParser()
        parser.add_argument("-c", "--config", action=ActionConfigFile)
        parser.add_class_arguments(Study, as_group=False)
        init = parser.instantiate(parser.parse_args(["-c", str(path), "--out", str(tmp_path)]))
        init.pop("config")
        assert Study(**init).runs()


def test_the_shipped_study_resumes_from_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``study.json`` names what a study was made with as every later version must name it: a resume of the
    shipped Fashion-MNIST study finds nothing to train and rewrites its record as it was."""
    import shutil

    from jsonargparse import ActionConfigFile, ArgumentParser

    root = Path(__file__).resolve().parents[2]
    shipped = root / "docs" / "results" / "fashion_mnist_study"
    for name in ("results.csv", "study.json"):
        shutil.copy(shipped / name, tmp_path / name)
    parser = ArgumentParser()
    parser.add_argument("-c", "--config", action=ActionConfigFile)
    parser.add_class_arguments(Study, as_group=False)
    config = root / "configs" / "study" / "fashion_mnist.yaml"
    init = parser.instantiate(parser.parse_args(["-c", str(config), "--out", str(tmp_path)]))
    init.pop("config")
    resumed = Study(**init)
    resumed.check_resume(read_csv(tmp_path / "results.csv"))  # refused, naming each difference, if anything moved
    assert json.loads((tmp_path / "study.json").read_text()) == json.loads((shipped / "study.json").read_text())


def test_kdl_dispatches_study(tmp_path: Path) -> None:
    from kdlightning.cli import main

    iid = "--scenarios=[{class_path: kdlightning.data.IIDPartitioner}]"
    main(["study", "--out", str(tmp_path), *QUICK, "--tuned_kd=false", iid])
    assert len(read_csv(tmp_path / "results.csv")) == 4


def test_tuned_kd_is_the_point_chosen_on_validation_tested_once(tmp_path: Path) -> None:
    rows = study(tmp_path, methods={"vanilla_kd": VanillaKD}, tuned_kd=True, tuning=SMALL_GRID, seeds=[0]).run(
        progress=False
    )
    assert [r["method"] for r in rows] == ["student_only", "vanilla_kd", "tuned_kd"] * 2
    for scenario, slug in (("iid", "iid-seed0"), ("dirichlet(alpha=0.5)", "dirichlet-alpha-0.5-seed0")):
        (row,) = [r for r in rows if r["scenario"] == scenario and r["method"] == "tuned_kd"]
        trials = read_csv(tmp_path / "tuning" / slug / "trials.csv")
        assert len(trials) == 4 and all(t["state"] == "COMPLETE" for t in trials)
        best = max(trials, key=lambda t: (float(t["val/acc"]), -float(t["val_loss"])))
        chosen = json.loads(row["hyperparameters"])
        assert (chosen["temperature"], chosen["alpha"]) == (float(best["temperature"]), float(best["alpha"]))
        assert chosen["val_acc"] == pytest.approx(float(best["val/acc"]))
        report = json.loads((tmp_path / "tuning" / slug / "best.json").read_text())
        assert report["test_acc"] == pytest.approx(float(row["acc_after"]))
        assert report["test_model"] == "checkpoint"
    for name in ("gains.png", "tuning.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    settings = ["temperature", "alpha"]
    written = read_csv(tmp_path / "results.csv")
    pairs = {"tuned_kd": "vanilla_kd"}  # the untuned run of tuned KD's method, VanillaKD
    expected = render_summary(
        written, tuned=["tuned_kd"], untuned=["vanilla_kd"], control="student_only", settings=settings, pairs=pairs
    )
    assert summary.endswith(expected) and "## The gain of tuning each method" in expected
    gain = {
        r["method"]: 100 * (float(r["acc_after"]) - float(r["acc_before"])) for r in written if r["scenario"] == "iid"
    }
    cell = summarize(written)[("iid", "vanilla_kd")]
    assert cell.n == 1 and cell.mean == pytest.approx(gain["vanilla_kd"])
    over = paired_gains(written, control="student_only")[("iid", "vanilla_kd")]
    assert over.n == 1 and over.difference.mean == pytest.approx(gain["vanilla_kd"] - gain["student_only"])


@pytest.mark.parametrize("batched", [True, False])
def test_tuned_kd_validates_on_the_own_or_the_public_split_as_two_rows(tmp_path: Path, batched: bool) -> None:
    tuning = TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.1, 0.9]}, validation=["own", "public"])
    skewed = DirichletPartitioner(alpha=0.1)
    made = study(
        tmp_path,
        methods={"vanilla_kd": VanillaKD},
        tuned_kd=True,
        tuning=tuning,
        scenarios=[skewed],
        seeds=[0],
        batched=batched,
        public_fraction=0.1,
    )
    rows = made.run(progress=False)
    assert [r["method"] for r in rows] == ["student_only", "vanilla_kd", "tuned_kd", "tuned_kd_public"]
    assert [r.get("validation") for r in rows[2:]] == ["own", "public"]
    assert len({r["acc_before"] for r in rows}) == 1  # one pre-trained start for both searches
    # each search measured the student before training on its own split: own = the party's share, public = the
    # split held out before partitioning
    student = made.pretraining.pretrained("student", skewed, 0)
    for validation, folder in (("own", "dirichlet-alpha-0.1-seed0"), ("public", "dirichlet-alpha-0.1-seed0-public")):
        data = made.config.datamodule(skewed, 0, made.config.student_party)
        data.validation = validation
        data.setup("fit")
        inputs = torch.stack([x for x, _ in data.val_set])
        labels = torch.tensor([int(y) for _, y in data.val_set])
        with torch.no_grad():
            expected = (student(inputs).argmax(1) == labels).float().mean().item()
        report = json.loads((tmp_path / "tuning" / folder / "best.json").read_text())
        assert report["val_before"] == pytest.approx(expected)
        assert len(read_csv(tmp_path / "tuning" / folder / "trials.csv")) == 4
    assert not set(data.public_index) & set(data.transfer_index())
    recorded = json.loads((tmp_path / "study.json").read_text())
    assert recorded["methods"]["tuned_kd_public"]["tuning"]["validation"] == "public"
    assert recorded["methods"]["tuned_kd"]["tuning"]["validation"] == "own"
    assert recorded["settings"]["public_fraction"] == 0.1
    assert (tmp_path / "tuning_public.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_batched_cell_trains_one_grid_for_both_validations_with_each_search_s_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Own and public validation search the same trials: one fit trains them, each split ranks them as alone."""
    from kdlightning import BatchedMembers

    fits = kill_at_fit(monkeypatch, BatchedMembers, 0)  # counts the fits
    tuning = TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.1, 0.9]}, validation=["own", "public"])
    options = {"methods": {}, "tuned_kd": True, "scenarios": [IIDPartitioner()], "seeds": [0], "public_fraction": 0.1}
    together = study(tmp_path / "batched", tuning=tuning, **options).run(progress=False)
    assert fits["n"] == 1  # the control and the 4 points, validated on both splits
    apart = study(tmp_path / "apart", tuning=tuning, batched=False, **options).run(progress=False)  # a fit a trial
    assert fits["n"] == 1
    for folder, name in (("iid-seed0", "tuned_kd"), ("iid-seed0-public", "tuned_kd_public")):
        joint, alone = (
            sorted(
                read_csv(tmp_path / run / "tuning" / folder / "trials.csv"),
                key=lambda t: (t["temperature"], t["alpha"]),
            )
            for run in ("batched", "apart")
        )
        assert [(t["temperature"], t["alpha"]) for t in joint] == [(t["temperature"], t["alpha"]) for t in alone]
        assert [float(t["val/acc"]) for t in joint] == pytest.approx([float(t["val/acc"]) for t in alone], abs=0.02)
        assert [float(t["val_loss"]) for t in joint] == pytest.approx([float(t["val_loss"]) for t in alone], rel=1e-3)
        rows = [next(r for r in run if r["method"] == name) for run in (together, apart)]
        assert json.loads(rows[0]["hyperparameters"])["trials"] == 4
        assert float(rows[0]["acc_after"]) == pytest.approx(float(rows[1]["acc_after"]), abs=0.01)
    public, own = (
        read_csv(tmp_path / "batched" / "tuning" / f / "trials.csv") for f in ("iid-seed0-public", "iid-seed0")
    )
    assert [t["val_loss"] for t in public] != [t["val_loss"] for t in own]  # validated on different splits


class Killed(BaseException):
    """A kill: no handler of Lightning or Optuna swallows it."""


def kill_at_fit(monkeypatch: pytest.MonkeyPatch, method: type, n: int) -> dict[str, int]:
    """Raise :class:`Killed` when the ``n``-th fit of ``method`` starts; the returned ``{"n": ...}`` counts fits."""
    fits = {"n": 0}
    on_fit_start = method.on_fit_start

    def counted(self) -> None:
        fits["n"] += 1
        if fits["n"] == n:
            raise Killed
        on_fit_start(self)

    monkeypatch.setattr(method, "on_fit_start", counted)
    return fits


def test_a_study_killed_during_tuned_kd_resumes_its_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fits = kill_at_fit(monkeypatch, VanillaKD, 3)  # killed in the search's third trial
    options = {"methods": {}, "tuned_kd": True, "tuning": SMALL_GRID, "seeds": [0], "scenarios": [IIDPartitioner()]}
    options["batched"] = False
    with pytest.raises(Killed):
        study(tmp_path, **options).run(progress=False)
    assert [r["method"] for r in read_csv(tmp_path / "results.csv")] == ["student_only"]
    trials = read_csv(tmp_path / "tuning" / "iid-seed0" / "trials.csv")
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]

    rows = study(tmp_path, **options).run(progress=False)
    assert [r["method"] for r in rows] == ["student_only", "tuned_kd"]
    assert fits["n"] == 3 + 2  # only the killed trial and the last grid point trained: finished trials were kept
    trials = read_csv(tmp_path / "tuning" / "iid-seed0" / "trials.csv")
    assert sum(t["state"] == "COMPLETE" for t in trials) == 4


def test_a_batched_study_killed_during_tuned_kd_redoes_only_unfinished_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdlightning import BatchedMembers

    fits = kill_at_fit(monkeypatch, BatchedMembers, 2)  # killed in the cell's second fit
    options = {"methods": {}, "tuned_kd": True, "tuning": SMALL_GRID, "seeds": [0], "scenarios": [IIDPartitioner()]}
    with pytest.raises(Killed):
        study(tmp_path, max_members=2, **options).run(progress=False)
    # the first fit held the control and the first grid point: the point is a trial, the cell has no row yet
    assert [t["state"] for t in read_csv(tmp_path / "tuning" / "iid-seed0" / "trials.csv")] == ["COMPLETE"]
    assert read_csv(tmp_path / "results.csv") == []

    rows = study(tmp_path, max_members=2, **options).run(progress=False)
    assert [r["method"] for r in rows] == ["student_only", "tuned_kd"]
    assert fits["n"] == 2 + 2  # the control with the 3 points left, 2 per fit
    trials = read_csv(tmp_path / "tuning" / "iid-seed0" / "trials.csv")
    assert sum(t["state"] == "COMPLETE" for t in trials) == 4
    assert json.loads(rows[1]["hyperparameters"])["trials"] == 4


def test_an_unknown_method_in_a_study_config_is_named(tmp_path: Path, capsys) -> None:
    from kdlightning.cli import main

    with pytest.raises(SystemExit):
        main(["study", "--out", str(tmp_path), *QUICK, "--methods={kd: {class_path: kdlightning.NoSuchMethod}}"])
    assert "NoSuchMethod" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


ONE_POINT = TuneOptions(grid={"temperature": [4.0], "alpha": [0.5]})
"""Tuned KD's search over a single point: the cheapest search that still writes its storage."""


def tiny(out: Path, **kwargs) -> Study:
    """A one-scenario, one-seed, one-epoch study: control and vanilla KD."""
    options = {"methods": {"vanilla_kd": VanillaKD}, "scenarios": [IIDPartitioner()], "seeds": [0]}
    return study(out, **{**options, "pretrain_epochs": 1, "epochs": 1, **kwargs})


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any further training fail the test."""

    def fit(*args, **kwargs) -> None:
        raise AssertionError("a run trained although the study was already done or refused")

    monkeypatch.setattr(L.Trainer, "fit", fit)


def test_a_resumed_study_refuses_another_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny(tmp_path, tuned_kd=True, tuning=ONE_POINT).run(progress=False)
    before = (tmp_path / "results.csv").read_bytes()
    no_training(monkeypatch)
    changes = [
        ({"epochs": 2}, "`epochs`: 1 in .*, 2 now"),
        ({"pretrain_epochs": 3}, "`pretrain_epochs`"),
        ({"batch_size": 16}, "`batch_size`"),
        ({"student": partial(MLP, in_features=64, hidden_sizes=(16,))}, "`student`"),
        ({"dataset": Digits(test_fraction=0.3)}, "`dataset`"),
        ({"methods": {"vanilla_kd": partial(VanillaKD, temperature=2.0)}}, "`methods.vanilla_kd`.*temperature"),
        ({"tuning": TuneOptions(grid={"temperature": [4.0], "alpha": [0.9]})}, "`tuning`.*grid"),
        ({"trainer": {"gradient_clip_val": 0.1}}, r"`trainer`: absent in .*, \{\"gradient_clip_val\": 0.1\} now"),
        ({"trainer": {"precision": "bf16-mixed"}}, "`trainer`.*bf16-mixed"),
    ]
    for change, message in changes:
        with pytest.raises(ValueError, match=message) as refused:
            tiny(tmp_path, **{"tuned_kd": True, "tuning": ONE_POINT, **change}).run(progress=False)
        assert "--out" in str(refused.value)
    assert (tmp_path / "results.csv").read_bytes() == before  # nothing the refused runs could have mixed in

    # Results of a study that kept no record: what their rows carry (the epochs) is still checked.
    (tmp_path / "study.json").unlink()
    with pytest.raises(ValueError, match="`epochs`"):
        tiny(tmp_path, tuned_kd=True, tuning=ONE_POINT, epochs=2).run(progress=False)
    with pytest.warns(UserWarning, match="no study.json"):
        assert len(tiny(tmp_path, tuned_kd=True, tuning=ONE_POINT).run(progress=False)) == 3  # nothing rerun
    recorded = json.loads((tmp_path / "study.json").read_text())["methods"]
    assert set(recorded) == {"student_only", "vanilla_kd", "tuned_kd"}


def test_new_seeds_and_methods_extend_a_finished_study(tmp_path: Path) -> None:
    first = tiny(tmp_path).run(progress=False)
    rows = tiny(tmp_path, methods={"vanilla_kd": VanillaKD, "dpkd": DataPartitioningKD}, seeds=[0, 1]).run(
        progress=False
    )
    assert [(r["seed"], r["method"]) for r in rows][:2] == [("0", "student_only"), ("0", "vanilla_kd")]
    assert [r["acc_after"] for r in rows[:2]] == [str(r["acc_after"]) for r in first]  # finished runs were kept
    assert sorted((int(r["seed"]), r["method"]) for r in rows[2:]) == [
        (0, "dpkd"),
        (1, "dpkd"),
        (1, "student_only"),
        (1, "vanilla_kd"),
    ]
    seeds = sorted({int(r["seed"]) for r in rows})
    assert {key: cell.n for key, cell in summarize(rows).items()} == {
        ("iid", method): len(seeds) for method in ("student_only", "vanilla_kd", "dpkd")
    }
    assert f"seeds {seeds}," in (tmp_path / "summary.md").read_text()


class Diverging(VanillaKD):
    """Vanilla KD whose loss is NaN from the first step."""

    def training_losses(self, batch):
        losses = super().training_losses(batch)
        return {**losses, "loss": losses["loss"] * float("nan")}


def test_a_diverging_method_is_recorded_as_failed_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = {"n": 0}

    def broken(student, teacher, num_classes):
        built["n"] += 1
        if built["n"] > 1:  # the study's check at construction builds it once
            raise RuntimeError("broken factory")
        return VanillaKD(student, teacher, num_classes)

    methods = {"diverging": Diverging, "vanilla_kd": VanillaKD, "broken": broken}
    with pytest.raises(RuntimeError, match="broken factory") as raised:
        tiny(tmp_path, methods=methods, batched=False).run(progress=False)
    assert any("iid" in note and "seed 0" in note and "broken" in note for note in raised.value.__notes__)
    rows = read_csv(tmp_path / "results.csv")
    assert [r["method"] for r in rows] == ["student_only", "diverging", "vanilla_kd"]
    assert rows[1]["error"].startswith("DivergedError: Non-finite training loss")
    assert rows[1]["acc_after"] == "" and rows[1]["gain_pp"] == ""
    assert rows[2]["error"] == "" and float(rows[2]["acc_after"]) > 0
    failed = [r for r in rows if is_failed(r)]
    assert [r["method"] for r in failed] == ["diverging"]
    assert ("iid", "diverging") not in summarize(rows)  # left out of the statistics
    assert list(paired_gains(rows, control="student_only")) == [("iid", "vanilla_kd")]
    summary = (tmp_path / "summary.md").read_text()
    listed = [f"| {r['scenario']} | {r['seed']} | {r['method']} | {r['error']} |" for r in failed]
    assert f"{len(failed)} of {len(rows)} runs failed" in summary and set(listed) <= set(summary.splitlines())

    no_training(monkeypatch)  # a failed run counts as done: the resume trains nothing
    again = tiny(tmp_path, methods={"diverging": Diverging, "vanilla_kd": VanillaKD}).run(progress=False)
    assert [r["method"] for r in again] == ["student_only", "diverging", "vanilla_kd"]
    assert again[1]["gain_pp"] is None


def test_a_diverging_member_is_a_failed_row_beside_the_members_that_trained(tmp_path: Path) -> None:
    rows = tiny(tmp_path, methods={"diverging": Diverging, "vanilla_kd": VanillaKD}).run(progress=False)
    assert [r["method"] for r in rows] == ["student_only", "diverging", "vanilla_kd"]
    assert rows[1]["error"].startswith("DivergedError: Non-finite training loss at global step 0")
    assert rows[1]["acc_after"] == "" and rows[1]["gain_pp"] is None
    assert not rows[2].get("error") and float(rows[2]["acc_after"]) > 0
    failed = [r for r in rows if is_failed(r)]
    assert [r["method"] for r in failed] == ["diverging"]
    assert f"{len(failed)} of {len(rows)} runs failed" in (tmp_path / "summary.md").read_text()
    built = {"n": 0}

    def broken(student, teacher, num_classes):
        built["n"] += 1
        if built["n"] > 1:  # the study's check at construction builds it once
            raise RuntimeError("broken factory")
        return VanillaKD(student, teacher, num_classes)

    with pytest.raises(RuntimeError, match="broken factory") as raised:
        tiny(tmp_path / "broken", methods={"broken": broken}).run(progress=False)
    assert any("iid, seed 0, methods ['student_only', 'broken']" in note for note in raised.value.__notes__)


def test_a_tuning_storage_of_another_configuration_gets_the_study_s_advice(tmp_path: Path) -> None:
    tiny(tmp_path, methods={}, tuned_kd=True, tuning=ONE_POINT).run(progress=False)
    (tmp_path / "results.csv").unlink()  # the results went, the search's storage stayed
    (tmp_path / "study.json").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="--out") as refused:
        tiny(tmp_path, methods={}, tuned_kd=True, tuning=ONE_POINT, epochs=2).run(progress=False)
    message = str(refused.value)
    assert "study_name" not in message
    assert str(tmp_path / "tuning" / "iid-seed0") in message


@pytest.mark.parametrize("batched", [False, True])
def test_the_study_s_optimizer_trains_every_fit(tmp_path: Path, batched: bool) -> None:
    frozen = partial(torch.optim.SGD, lr=0.0)  # nothing moves: every fit that uses it leaves its network as it was
    faster = partial(VanillaKD, optimizer=partial(torch.optim.Adam, lr=0.01))
    methods = {"vanilla_kd": VanillaKD, "faster": faster, "dml": DeepMutualLearning, "dpkd": DataPartitioningKD}
    runner = study(
        tmp_path,
        methods=methods,
        scenarios=[IIDPartitioner()],
        seeds=[0],
        tuned_kd=True,
        tuning=SMALL_GRID,
        optimizer=frozen,
        batched=batched,
    )
    if batched:
        assert runner.cells().members == {
            "student_only",
            "vanilla_kd",
            "faster",
            "dpkd",
            "dml",
        }  # one optimizer: one fit
    rows = runner.run(progress=False)
    assert {r["method"] for r in rows} == {"student_only", *methods, "tuned_kd"}
    assert all(float(r["acc_after"]) == float(r["acc_before"]) for r in rows)
    L.seed_everything(0, verbose=False)
    (student,) = (tmp_path / "pretrained").glob("student-*.pt")
    fresh = MLP(in_features=64, hidden_sizes=(8,), num_classes=10)
    saved = torch.load(student, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())  # the pre-training moved nothing
    recorded = json.loads((tmp_path / "study.json").read_text())["settings"]["optimizer"]
    assert recorded == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.0}}


def test_without_the_study_s_optimizer_each_method_trains_with_its_own(tmp_path: Path) -> None:
    rows = study(tmp_path, methods={"vanilla_kd": VanillaKD}, scenarios=[IIDPartitioner()], seeds=[0]).run(
        progress=False
    )
    assert all(float(r["acc_after"]) != float(r["acc_before"]) for r in rows)
    assert "optimizer" not in json.loads((tmp_path / "study.json").read_text())["settings"]


def test_a_partition_that_reads_the_data_is_a_study_scenario(tmp_path: Path) -> None:
    """A feature-skew scenario reads the inputs (not only the labels) in the study's early check and its parties."""
    from kdlightning.data import FeatureSkewPartitioner, NaturalPartitioner

    skew = FeatureSkewPartitioner(feature="mean_intensity", strictness=1.0)
    study(tmp_path / "out", scenarios=[skew]).check()
    with pytest.raises(ValueError, match="column"):  # the digits have no `author` column: named before any fit
        study(tmp_path / "natural", scenarios=[NaturalPartitioner(column="author")]).check()
