"""``robust-distill select-teacher``: identification runs (cached, reused), S_U and S_L, teachers ranked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from robust_distill.analysis.select_teacher import (
    Identification,
    _cache_folder,
    identification_config,
    rank_teachers,
    select_teacher,
)
from robust_distill.analysis.unlearnable import teacher_scores, unlearnable_sets
from robust_distill.cli import main
from robust_distill.engine.run import build_student, model_spec
from robust_distill.errors import SelectionError
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import FORMAT, load_checkpoint

DATA = {"val_size": 32, "batch_size": 16, "eval_batch_size": 64,
        "options": {"n_train": 96, "n_test": 32, "size": 8, "num_classes": 4}}
TINY_IDENT = {"data": DATA, "threat": {"steps": 2}, "optim": {"lr": 0.05},
              "eval": {"n_examples": 32}}


def _row(name: str, h_u: float, c_l: float, n_u: int = 10, n_l: int = 10) -> dict[str, Any]:
    return {"teacher": name, "unlearnable": {"entropy": h_u, "confidence": 0.2, "n": n_u},
            "learnable": {"entropy": 0.1, "confidence": c_l, "n": n_l}}


def test_rank_teachers_recommends_the_highest_entropy_teacher_that_is_confident_on_s_l() -> None:
    rows = [_row("uniform", 1.386, 0.25), _row("soft", 1.2, 0.7), _row("sharp", 0.3, 0.99)]
    ranked, best = rank_teachers(rows, 0.5)
    assert [r["eligible"] for r in ranked] == [False, True, True] and best == "soft"
    assert rank_teachers(rows, 0.8)[1] == "sharp"
    assert rank_teachers(rows, 1.0)[1] is None  # nobody is confident enough
    empty = [_row("a", float("nan"), 0.9, n_u=0)]
    assert rank_teachers(empty, 0.5)[1] is None  # an empty S_U ranks nothing
    assert rows[0].get("eligible") is None  # the input rows are not modified


def test_identification_config_layers_and_cache_folders(tmp_path: Path) -> None:
    ident = Identification(epochs=2, eps=0.1, base={"optim": {"epochs": 7, "lr": 0.02}, "data": {"val_size": 100}},
                           overrides=("eval.train_records=300",))
    raw = identification_config("timm:convnet_s", "fashion_mnist", ident, device="cpu")
    assert raw["optim"]["epochs"] == 2  # a flag beats the base config ...
    assert raw["optim"]["lr"] == 0.02 and raw["optim"]["weight_decay"] == 5.0e-4  # ... which beats the defaults
    assert raw["eval"]["train_records"] == 300 and raw["eval"]["final_attacks"] == []  # --set beats everything
    assert raw["threat"] == {"steps": 10, "eps": 0.1, "step_size": 0.025}
    assert raw["data"]["dataset"] == "fashion_mnist" and raw["data"]["val_size"] == 100
    assert raw["data"]["train_subset"] == 5000 and raw["student"] == "timm:convnet_s"
    folder = _cache_folder(tmp_path, raw, ident)
    assert folder.parent == tmp_path and folder.name.startswith("fashion_mnist-convnet_s-")
    assert _cache_folder(tmp_path, {**raw, "device": "cuda"}, ident) == folder  # the device does not count
    assert _cache_folder(tmp_path, {**raw, "student": "timm:convnet_m"}, ident) != folder
    assert _cache_folder(tmp_path, raw, Identification(seeds=(0, 1, 2))) != folder
    with pytest.raises(SelectionError, match="train_records > 0"):
        identification_config("timm:convnet_s", "fashion_mnist", Identification(records=0))


def test_a_teacher_that_cannot_be_loaded_stops_selection_before_any_training(regs, tmp_path: Path) -> None:
    with pytest.raises(SelectionError, match="'checkpoint:nope.pt' cannot be loaded.*does not exist"):
        select_teacher("timm:convnet_xs", ["checkpoint:nope.pt"], regs, dataset="synthetic",
                       cache=tmp_path / "cache", log=lambda msg: None)
    assert not (tmp_path / "cache").exists()


def _teacher(path: Path, regs, state: dict[str, torch.Tensor] | None = None, scale: float = 1.0) -> str:
    """A convnet_xs checkpoint: zero classifier (uniform outputs) or ``state`` with its logits scaled."""
    info = regs.datasets.get("synthetic").info(**DATA["options"])
    model = build_student("timm:convnet_xs", {}, info, regs)
    if state is None:
        torch.nn.init.zeros_(model.classifier.weight), torch.nn.init.zeros_(model.classifier.bias)
        state = model.state_dict()
    state = {k: v * scale if k.startswith("classifier.") else v for k, v in state.items()}
    atomic_save({"format": FORMAT, "model": model_spec("timm:convnet_xs", {}, info), "state_dict": state}, path)
    return f"checkpoint:{path}"


@pytest.mark.slow
def test_select_teacher_end_to_end_ranks_known_teachers_and_reuses_its_runs(
        regs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uniform = _teacher(tmp_path / "uniform.pt", regs)
    ident = Identification(seeds=(0,), epochs=1, records=64, eps=8 / 255, train_subset=0, base=TINY_IDENT)
    first = select_teacher("timm:convnet_xs", [uniform], regs, dataset="synthetic", ident=ident,
                           cache=tmp_path / "cache", device="cpu", log=lambda msg: None)
    ident_runs = [Path(r["run"]) for r in first["identification"]["runs"]]
    assert [p.name for p in ident_runs] == ["method=pgd_at,seed=0", "method=trades,seed=0"]
    assert first["identification"]["trained"] == 2 and first["identification"]["reused"] == 0
    sets = unlearnable_sets(ident_runs)
    assert first["sets"] == {k: sets[k] for k in ("size_unlearnable", "size_learnable", "n_recorded")}
    assert first["sets"]["n_recorded"] == 64 and first["sets"]["size_unlearnable"] > 0
    written = json.loads((Path(first["identification"]["folder"]) / "unlearnable.json").read_text())
    assert written["indices_unlearnable"] == sets["indices_unlearnable"]
    # a uniform-output teacher has the maximal entropy, log C, on S_U and S_L, and confidence 1/C: never eligible
    (row,) = first["teachers"]
    assert row["unlearnable"]["entropy"] == pytest.approx(math.log(4), abs=1e-6)
    assert row["learnable"]["confidence"] == pytest.approx(0.25, abs=1e-6) and not row["eligible"]
    assert first["recommended"] is None

    # second call, through the command line: the runs are reused (not retrained), two more teachers are scored:
    # the PGD-AT student as it is, and the same network with its logits x100 (same predictions, sharper)
    best = load_checkpoint(ident_runs[0] / "best.pt")["state_dict"]
    plain, sharp = _teacher(tmp_path / "plain.pt", regs, best), _teacher(tmp_path / "sharp.pt", regs, best, 100.0)
    mtimes = [(p / "summary.json").stat().st_mtime for p in ident_runs]
    out = tmp_path / "selection.json"
    capsys.readouterr()
    assert main(["select-teacher", "--student", "timm:convnet_xs", "--teachers", sharp, uniform, plain,
                 "--dataset", "synthetic", "--seeds", "0", "--epochs", "1", "--records", "64", "--eps", "8/255",
                 "--train-subset", "0", "--cache", str(tmp_path / "cache"), "--device", "cpu", "--out", str(out),
                 *[f"--set={k}" for k in ("data.val_size=32", "data.batch_size=16", "data.eval_batch_size=64",
                                          "data.options.n_train=96", "data.options.n_test=32",
                                          "data.options.size=8", "data.options.num_classes=4",
                                          "threat.steps=2", "optim.lr=0.05", "eval.n_examples=32")]]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["identification"]["reused"] == 2 and result["identification"]["trained"] == 0
    assert result["identification"]["folder"] == first["identification"]["folder"]
    assert [(p / "summary.json").stat().st_mtime for p in ident_runs] == mtimes
    assert [r["teacher"] for r in result["teachers"]] == [uniform, plain, sharp]  # by entropy on S_U
    assert [r["rank"] for r in result["teachers"]] == [1, 2, 3]
    # the scores are analysis.teacher_scores' (one implementation), on the dataset's training split
    bundle = regs.datasets.get("synthetic").load(**DATA["options"])
    models = {t: regs.call(regs.teacher_sources.get("checkpoint").load, t.split(":", 1)[1], dataset=bundle.info)
              for t in (uniform, plain, sharp)}
    expected = {r["teacher"]: r for r in teacher_scores(models, bundle.train_x, bundle.train_y, sets)}
    for r in result["teachers"]:
        for part in ("unlearnable", "learnable"):
            assert r[part]["entropy"] == pytest.approx(expected[r["teacher"]][part]["entropy"], abs=1e-6)
            assert r[part]["confidence"] == pytest.approx(expected[r["teacher"]][part]["confidence"], abs=1e-6)
    sharp_row = result["teachers"][2]
    assert sharp_row["eligible"] and sharp_row["learnable"]["confidence"] > 0.9  # S_L: the run classified it right
    assert result["recommended"] == next(r["teacher"] for r in result["teachers"] if r["eligible"])
    assert result["recommended"] != uniform
    assert f"Recommended teacher: {result['recommended']}" in printed and "| 1 | " + uniform in printed
    assert "S_U (robustly unlearnable" in printed and "no (not confident on S_L)" in printed
