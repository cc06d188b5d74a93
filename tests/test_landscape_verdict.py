"""benchmarks/fashion_mnist/landscape_verdict.py: the paired best-vs-last comparison by hand, and verdicts read from
committed landscape JSONs when the checkpoints are gone (a fresh checkout keeps the JSONs, not the .pt files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

S = [-1.0, -0.5, 0.0, 0.5, 1.0]
OPTIONS = {"n_examples": 500, "directions": 3, "points": 5, "s_max": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def lv():
    return load_script("benchmarks/fashion_mnist/landscape_verdict.py")


def model(name: str, rises: list[float], loss_0: float = 1.0) -> dict:
    """A landscape of 3 directions whose rise at |s| = 0.5 is ``rises[k]`` on both sides (and 4x that at 1)."""
    loss = [[loss_0 + 4 * r, loss_0 + r, loss_0, loss_0 + r, loss_0 + 4 * r] for r in rises]
    return {"model": name, "s": S, "loss": loss, "loss_0": loss_0, "accuracy_0": 0.5, "seconds": 1.0,
            "sharpness": {"0.5": {"mean": sum(rises) / 3}, "1": {"mean": 4 * sum(rises) / 3}}}


def test_paired_difference_and_its_standard_error_by_hand(lv):
    # differences 0.4, 0.4, 0.5: mean 0.4333, sd 0.0577, s.e. 0.0333 -> beyond 2 s.e.: sharper
    c = lv.compare(model("b", [0.1, 0.2, 0.3]), model("l", [0.5, 0.6, 0.8]), 0.5)
    assert c["difference"] == pytest.approx(0.43333, abs=1e-4)
    assert c["se"] == pytest.approx(0.03333, abs=1e-4)
    assert c["reading"] == "sharper"
    # differences 0.1, -0.1, 0.05: mean 0.0167, within 2 s.e.
    assert lv.compare(model("b", [0.1, 0.2, 0.3]), model("l", [0.2, 0.1, 0.35]), 0.5)["reading"] == "no difference"


def run_folder(root: Path, name: str, best: float, last: float) -> Path:
    run = root / "overfit_noise" / name
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    final = {"best": {"pgd20": best, "autoattack_apgd": best}, "last": {"pgd20": last, "autoattack_apgd": last}}
    (run / "summary.json").write_text(json.dumps({"final": final}))
    return run


def test_verdict_from_committed_jsons_without_checkpoints(lv, tmp_path):
    results = tmp_path / "results"
    out = results / "landscape"
    overfits = run_folder(results, "label_noise=0.4,seed=1", 0.55, 0.40)   # gap 15 points
    run_folder(results, "label_noise=0.4,seed=2", 0.55, 0.40)              # neither JSON nor checkpoints: left out
    (out / "overfit").mkdir(parents=True)
    data = {"settings": {**OPTIONS, "levels": [0.5, 1.0]},
            "models": [model(str(overfits / "best.pt"), [0.1, 0.2, 0.3]),
                       model(str(overfits / "last.pt"), [0.5, 0.6, 0.8])]}
    (out / "overfit" / f"overfit_noise__{overfits.name}.json").write_text(json.dumps(data))
    text = lv.main(["--results", str(results), "--only", "overfit", "--directions", "3", "--points", "5",
                    "--regimes", "overfit_noise"])
    assert "| overfit_noise/label_noise=0.4,seed=1 | 55.0 / 40.0 (15.0) | yes |" in text
    assert "+0.433 ± 0.033: last sharper" in text
    assert "Verdict (a): **holds**: the last checkpoint is sharper in 1 of the 1 overfitting runs" in text
    assert "seed=2" not in text
    # other settings than the JSON's, and no checkpoints to recompute: the row says so, no verdict
    text = lv.main(["--results", str(results), "--only", "overfit", "--directions", "4", "--points", "5",
                    "--regimes", "overfit_noise"])
    assert "not computed (its JSON has other settings and its checkpoints are gone)" in text
    assert "no landscape computed: no verdict." in text
