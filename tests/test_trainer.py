"""The engine: a run trains, evaluates, checkpoints atomically and resumes to the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from robust_distill.engine.trainer import train
from robust_distill.errors import CheckpointError
from robust_distill.files import checkpoint as ckpt_mod
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import load_checkpoint


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.parametrize("method", ["pgd_at", "trades", "ard", "rslad", "adaad"])
def test_each_core_method_trains_and_learns(tiny_config, method: str) -> None:
    teacher = method not in ("pgd_at", "trades")
    cfg = tiny_config(method, teacher, overrides=["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean"])
    summary = train(cfg)
    out = Path(cfg.output_dir)
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "best.pt", "last.pt", "summary.json"} <= {
        p.name for p in out.iterdir()}
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["epoch"] == 0 and 0.0 <= row["val_clean"] <= 1.0 and row["train_loss"] > 0
    assert summary["best_epoch"] == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == method and saved["inner_attack"]["key"] == cfg.inner_attack.key


def test_training_improves_accuracy_on_learnable_data(tiny_config) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=4", "optim.lr=0.1", "threat.steps=1",
                                           "data.options.n_train=256", "eval.attacks=[clean]", "eval.select=clean"])
    train(cfg)
    rows = [json.loads(r) for r in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_clean"] > 0.5  # 4 classes: chance is 0.25
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.01, 0.01, 0.01])  # milestone at epoch 1


def test_resume_equals_an_uninterrupted_run(tiny_config, tmp_path: Path) -> None:
    over = ["optim.epochs=3", "eval.train_records=16"]
    full = tiny_config("rslad", True, overrides=over + [f"output_dir={tmp_path / 'full'}"])
    part = tiny_config("rslad", True, overrides=over + [f"output_dir={tmp_path / 'part'}"])
    train(full)
    assert train(part, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    train(part)  # resumes at epoch 1
    a, b = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "part" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [json.loads(r) for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time_")}  # noqa: E731
    assert [strip(r) for r in rows("full")] == [strip(r) for r in rows("part")]
    rec_a = load_checkpoint(tmp_path / "full" / "train_records.pt")
    rec_b = load_checkpoint(tmp_path / "part" / "train_records.pt")
    assert rec_a["records"].keys() == rec_b["records"].keys() == {"0", "1", "2"}
    assert all(torch.equal(rec_a["records"][k], rec_b["records"][k]) for k in rec_a["records"])


def test_best_and_last_checkpoints(tiny_config) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=3"])
    summary = train(cfg)
    out = Path(cfg.output_dir)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_pgd20"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_value"] == best["val_pgd20"]
    assert load_checkpoint(out / "best.pt")["epoch"] == best["epoch"] + 1
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and {"optimizer", "parts", "best"} <= last.keys()
    assert last["model"] == {"key": "timm:convnet_xs", "kwargs": {}, "num_classes": 4,
                             "input_shape": [3, 8, 8], "dataset": "synthetic"}


def test_a_crash_while_saving_leaves_the_old_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    def explode(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", explode)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"obj": object()}, path)  # pickles a non-tensor object
    with pytest.raises(CheckpointError, match="pickles object, not only weights"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_final_evaluation_and_eps_schedule(tiny_config, monkeypatch) -> None:
    from robust_distill.core.attacks import InnerPGD

    seen = []  # per training step: (eps, step size, largest perturbation of the inner attack)
    attack = InnerPGD.__call__

    def recording(self, step):
        x_adv = attack(self, step)
        seen.append((step.threat.eps, step.threat.step_size, (x_adv - step.x).abs().max().item()))
        return x_adv

    monkeypatch.setattr(InnerPGD, "__call__", recording)
    cfg = tiny_config("adaad", True, overrides=["optim.epochs=2", "threat.eps_end=16/255",
                                                 "eval.final_attacks=[clean,fgsm]", "eval.final_n_examples=16"])
    summary = train(cfg)
    assert set(summary["final"]) == {"best", "last"} and set(summary["final"]["last"]) == {"clean", "fgsm"}
    assert (Path(cfg.output_dir) / "test_correct_last.pt").is_file()
    # 64 training images in batches of 16: 8 steps over 2 epochs; eps grows linearly from 8/255 towards 16/255
    # (step k at progress k/8), the step size keeps its ratio eps/4, and the attack uses the grown radius
    assert [e for e, _, _ in seen] == pytest.approx([(8 + k) / 255 for k in range(8)])
    assert [a for _, a, _ in seen] == pytest.approx([(8 + k) / 255 / 4 for k in range(8)])
    assert all(delta <= eps + 1e-6 for eps, _, delta in seen)
    base_reach = 2 * (2 / 255) + 0.005  # 2 PGD steps of the initial step size, plus AdaAD's 0.001 N(0,1) start
    assert seen[0][2] <= base_reach < seen[-1][2] <= 2 * seen[-1][1] + 0.005


def test_final_evaluation_evaluates_once_when_the_best_checkpoint_is_the_last(tiny_config, monkeypatch) -> None:
    from robust_distill.engine.run import Run
    calls = []
    original = Run.evaluate_student
    monkeypatch.setattr(Run, "evaluate_student", lambda self, split, *a, **k: (
        calls.append(split), original(self, split, *a, **k))[1])
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=1", "eval.final_attacks=[clean,pgd20]",
                                           "eval.final_n_examples=16"])
    summary = train(cfg)
    assert calls.count("test") == 1 and summary["final"]["best"] == summary["final"]["last"]
