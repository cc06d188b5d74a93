"""unlearnable_sets: S_U and S_L at each run's peak robust epoch (the paper's rule) or at its last epoch, on
records written by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from robust_distill.analysis.unlearnable import jaccard, unlearnable_sets
from robust_distill.cli import main
from robust_distill.errors import InputError


def write_run(folder: Path, best_epoch: int, records: dict[int, list[int]]) -> Path:
    """A run folder whose records say, per epoch, which of 6 samples (dataset positions 50-55) are robust."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"best_epoch": best_epoch}))
    (folder / "config.yaml").write_text("data: {dataset: synthetic}\n")
    torch.save({"indices": torch.arange(50, 56), "labels": torch.tensor([0, 1, 2, 3, 4, 5]),
                "records": {str(e): torch.tensor(c, dtype=torch.bool) for e, c in records.items()}},
               folder / "train_records.pt")
    return folder


@pytest.fixture
def overfitting_runs(tmp_path):
    """Two runs that peak at epoch 1 and then memorise: by their last epoch (2) they fit samples 0 and 1 too."""
    a = write_run(tmp_path / "a", 1, {0: [0, 0, 0, 0, 1, 1], 1: [0, 0, 0, 1, 1, 1], 2: [1, 1, 0, 1, 1, 1]})
    b = write_run(tmp_path / "b", 1, {0: [0, 0, 0, 0, 0, 1], 1: [0, 0, 0, 0, 1, 1], 2: [1, 0, 0, 1, 1, 1]})
    return [a, b]


def test_peak_is_the_default_and_last_takes_the_last_record(overfitting_runs):
    peak = unlearnable_sets(overfitting_runs)
    assert peak == unlearnable_sets(overfitting_runs, at="peak")
    # epoch 1: samples 0-2 wrong in both runs, 4-5 right in both, 3 right only in run a
    assert peak["indices_unlearnable"] == [50, 51, 52] and peak["indices_learnable"] == [54, 55]
    assert peak["labels_unlearnable"] == [0, 1, 2] and set(peak["runs"].values()) == {1}
    last = unlearnable_sets(overfitting_runs, at="last")
    # epoch 2: run a fits 0 and 1, run b fits 0: only sample 2 stays wrong in both; 0 and 3-5 right in both
    assert last["indices_unlearnable"] == [52] and last["indices_learnable"] == [50, 53, 54, 55]
    assert last["size_unlearnable"] == 1 and set(last["runs"].values()) == {2}


def test_an_unknown_rule_names_the_choices(overfitting_runs):
    with pytest.raises(InputError, match="peak, last"):
        unlearnable_sets(overfitting_runs, at="best")


def test_cli_at_last(overfitting_runs, tmp_path, capsys):
    out = tmp_path / "su_last.json"
    assert main(["unlearnable", *map(str, overfitting_runs), "--at", "last", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["indices_unlearnable"] == [52]
    assert "S_U (robustly unlearnable): 1 samples" in capsys.readouterr().out


def test_jaccard_by_hand():
    # {1,2,3} and {2,3,4,5}: 2 shared of 5 in all
    assert jaccard({1, 2, 3}, {2, 3, 4, 5}) == pytest.approx(0.4)
    assert jaccard({7}, {7}) == 1.0
    assert jaccard({1}, {2}) == 0.0
    assert math.isnan(jaccard(set(), set()))
