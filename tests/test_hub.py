"""Models out and in (issue 12, item 4): ``robust-distill export`` and the ``hf-hub:`` source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from robust_distill import ThreatModel
from robust_distill.cli import main
from robust_distill.config import resolve_config
from robust_distill.core.components import DatasetInfo
from robust_distill.engine.evaluation import evaluate, make_eval_attacks
from robust_distill.engine.trainer import train
from robust_distill.errors import HubError, UnsafeCheckpointError
from robust_distill.export import export_model
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import FORMAT, build_from_checkpoint

from .test_security import evil

INFO = DatasetInfo("synthetic", 4, (1, 8, 8))


@pytest.fixture
def no_timm_hub_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's own Hub weight loading (``.bin`` unpickled with weights_only=False) must never be reached."""
    import timm.models._builder as builder
    import timm.models._hub as hub

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("timm's load_state_dict_from_hf was called")

    monkeypatch.setattr(hub, "load_state_dict_from_hf", refuse)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", refuse)


@pytest.mark.slow
def test_an_exported_student_loads_back_with_the_checkpoints_clean_and_pgd20_accuracy(
        regs, tiny_raw, tmp_path: Path, no_timm_hub_loading: None, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at")
    raw["eval"].update(final_attacks=["clean", "pgd20"], final_n_examples=32)
    summary = train(resolve_config(raw, regs))
    run, out = Path(raw["output_dir"]), tmp_path / "hub"
    assert main(["export", str(run), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "curves.png", "model.safetensors"]

    # the checkpoint's numbers, measured again on the export loaded through the hf-hub: source
    teacher = regs.teacher_sources.get("hf-hub").load(str(out), dataset=regs.datasets.get("synthetic").info(
        **raw["data"]["options"]))
    bundle = regs.datasets.get("synthetic").load(**raw["data"]["options"])
    x, y = bundle.test_x[:32], bundle.test_y[:32]
    attacks = make_eval_attacks(["clean", "pgd20"], regs, ThreatModel(eps=8 / 255), num_classes=4)
    accuracy = evaluate(teacher, x, y, attacks, batch_size=64, seed=0).accuracy
    assert accuracy == summary["final"]["best"]  # exactly: the same network, the same attack and seed
    # and by `robust-distill eval hf-hub:<folder>`, which finds the dataset and eps in the export
    assert main(["eval", f"hf-hub:{out}", "--attacks", "clean,pgd20", "--n-examples", "32", "--batch-size", "64",
                 "--out", str(tmp_path / "eval.json")]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert {r["attack"]: r["accuracy"] for r in rows if r["attack"] != "worst_case"} == summary["final"]["best"]
    original, _ = build_from_checkpoint(run / "best.pt", regs)
    xf = x.float() / 255
    assert torch.equal(teacher(xf), original(xf))

    # the folder is timm's Hub format: plain timm + safetensors rebuild it (the card's recipe)
    import safetensors.torch

    from robust_distill_plugins.timm_students import _timm

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "convnet_xs" and cfg["num_classes"] == 4 and cfg["model_args"] == {"in_chans": 3}
    assert cfg["pretrained_cfg"]["input_size"] == [3, 8, 8] and cfg["pretrained_cfg"]["mean"] == [0.0] * 3
    plain = _timm().create_model(cfg["architecture"], num_classes=cfg["num_classes"], **cfg["model_args"]).eval()
    plain.load_state_dict(safetensors.torch.load_file(out / "model.safetensors"))
    assert torch.equal(plain(xf), original(xf))

    # the model card: RobustBench's table with the run's numbers, the plot, the training config
    card = (out / "README.md").read_text()
    best = summary["final"]["best"]
    assert (f"| synthetic | Linf | 8/255 | {100 * best['clean']:.2f} | {100 * best['pgd20']:.2f} | not evaluated "
            "| 32 (test split) |") in card
    assert "library_name: timm" in card and "![curves](curves.png)" in card and "method: pgd_at" in card

    # the export trains further: hf-hub: as a student starts from its weights
    student = regs.student_sources.get("hf-hub").build(str(out), input_shape=(3, 8, 8), num_classes=4)
    assert student.training and torch.equal(student.eval()(xf), original(xf))

    # a non-empty folder is not overwritten without --force
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 3
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(run), str(out), "--force", "--checkpoint", "last"]) == 0


def _checkpoint(path: Path, regs, kwargs: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = regs.student_sources.get("timm").build("convnet_xs", input_shape=(1, 8, 8), num_classes=4, **kwargs)
    spec = {"key": "timm:convnet_xs", "kwargs": kwargs, "num_classes": 4, "input_shape": [1, 8, 8],
            "dataset": "synthetic"}
    atomic_save({"format": FORMAT, "model": spec, "state_dict": model.state_dict(), "epoch": 3,
                 "config": {"method": "pgd_at", "threat": {"eps": 0.1}}}, path)
    return model.eval()


def test_a_normalisation_inside_the_model_goes_to_timms_pretrained_cfg(regs, tmp_path: Path,
                                                                       no_timm_hub_loading: None) -> None:
    model = _checkpoint(tmp_path / "c.pt", regs, {"normalize": [[0.5], [0.25]]})
    out = export_model(tmp_path / "c.pt", tmp_path / "hub", regs)
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "features.0.weight" in keys and not any(k.startswith("model.") or k in ("mean", "std") for k in keys)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["pretrained_cfg"]["mean"], cfg["pretrained_cfg"]["std"]) == ([0.5], [0.25])
    loaded = regs.teacher_sources.get("hf-hub").load(str(out), dataset=INFO)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))  # inputs in [0, 1], normalised inside as in training
    card = (out / "README.md").read_text()
    assert "| synthetic | Linf | 0.1 | not evaluated | not evaluated | not evaluated | - |" in card


def test_hub_repos_load_offline_from_a_populated_cache(regs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      no_timm_hub_loading: None) -> None:
    import huggingface_hub.constants as constants

    model = _checkpoint(tmp_path / "c.pt", regs, {})
    folder = export_model(tmp_path / "c.pt", tmp_path / "hub", regs)
    # the Hugging Face cache layout: models--<org>--<name>/{refs/main, snapshots/<commit>/<files>}
    repo = tmp_path / "hf" / "models--rd-org--fmnist-student"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (repo / "snapshots" / commit / name).write_bytes((folder / name).read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when the Hub is imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    loaded = regs.teacher_sources.get("hf-hub").load("rd-org/fmnist-student", dataset=INFO)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(HubError, match="hf-hub:rd-org/missing: could not get config.json.*HF_HUB_OFFLINE"):
        regs.teacher_sources.get("hf-hub").load("rd-org/missing", dataset=INFO)
    with pytest.raises(HubError, match="has 4 classes; the dataset has 10"):
        regs.teacher_sources.get("hf-hub").load("rd-org/fmnist-student", dataset=DatasetInfo("d", 10, (1, 8, 8)))


def test_a_pickled_bin_is_read_weights_only(regs, tmp_path: Path, no_timm_hub_loading: None) -> None:
    """timm Hub repos without safetensors have pytorch_model.bin: read with weights_only=True, never executed."""
    model = _checkpoint(tmp_path / "c.pt", regs, {})
    folder = export_model(tmp_path / "c.pt", tmp_path / "hub", regs)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(regs.teacher_sources.get("hf-hub").load(str(folder), dataset=INFO)(x), model(x))

    evil(folder / "pytorch_model.bin", tmp_path / "pwned", model.state_dict())
    with pytest.raises(UnsafeCheckpointError, match="not only weights"):
        regs.teacher_sources.get("hf-hub").load(str(folder), dataset=INFO)
    assert not (tmp_path / "pwned").exists()


def test_only_robust_distill_checkpoints_of_timm_models_export(regs, tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(HubError, match="not a robust-distill checkpoint"):
        export_model(tmp_path / "plain.pt", tmp_path / "a", regs)
    with pytest.raises(HubError, match="has no best.pt"):
        export_model(tmp_path, tmp_path / "b", regs)
    with pytest.raises(HubError, match="hf-hub:nowhere: not a folder here, nor a Hub repo id"):
        regs.teacher_sources.get("hf-hub").load("nowhere", dataset=INFO)


# -- RobustBench's model-info file (issue 22, item 4) ------------------------------------------------------

#: a real model-info file of RobustBench's CIFAR-10 L-inf leaderboard (tests/fixtures/robustbench/README.md)
ROBUSTBENCH_FILE = json.loads((Path(__file__).parent / "fixtures" / "robustbench"
                               / "Wang2023Better_WRN-28-10.json").read_text())


def test_the_model_info_has_robustbenchs_keys_in_its_order_and_its_value_types() -> None:
    from robust_distill.export import robustbench_model_info

    evaluation = {"split": "test", "n_examples": 10_000, "accuracy": {"clean": 0.625, "autoattack": 0.375,
                                                                      "pgd20": 0.5}}
    info = robustbench_model_info(evaluation, dataset="cifar10", eps=8 / 255, architecture="convnet_xs",
                                  test_size=lambda: 10_000, footnote="Trained with robust-distill.",
                                  model_info={"venue": "ICML 2026", "additional_data": True})
    assert list(info) == list(ROBUSTBENCH_FILE)
    assert {k: type(v) for k, v in info.items()} == {k: type(v) for k, v in ROBUSTBENCH_FILE.items()}
    assert (info["clean_acc"], info["autoattack_acc"], info["reported"]) == ("62.50", "37.50", "37.50")
    assert (info["eps"], info["dataset"], info["architecture"], info["number_forward_passes"]) == (
        "8/255", "cifar10", "convnet_xs", 1)
    assert (info["venue"], info["additional_data"], info["unreliable"]) == ("ICML 2026", True, False)


def _cifar_run(run: Path, regs, root: Path, *, final: dict[str, float] | None, n: int = 8,
               eps: float = 8 / 255) -> Path:
    """A run folder as training leaves it (best.pt, config.yaml, summary.json, test_correct_best.pt) on the
    tiny CIFAR-10 folder ``root``, whose final test evaluation measured ``final`` on ``n`` images."""
    import yaml

    torch.manual_seed(0)
    model = regs.student_sources.get("timm").build("convnet_xs", input_shape=(3, 32, 32), num_classes=10)
    config = {"method": "rslad", "teachers": {"robust": {"key": "timm:convnet_xs"}}, "seed": 0,
              "data": {"dataset": "cifar10", "root": str(root)}, "threat": {"eps": eps},
              "eval": {"final_attacks": list(final or []), "final_n_examples": n}}
    spec = {"key": "timm:convnet_xs", "kwargs": {}, "num_classes": 10, "input_shape": [3, 32, 32],
            "dataset": "cifar10"}
    run.mkdir()
    atomic_save({"format": FORMAT, "model": spec, "state_dict": model.state_dict(), "epoch": 1, "config": config},
                run / "best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "summary.json").write_text(json.dumps({"final": {"best": final}} if final else {}))
    if final:
        atomic_save({"correct": {k: torch.zeros(n, dtype=torch.bool) for k in final}, "indices": torch.arange(n)},
                    run / "test_correct_best.pt")
    return run


def test_export_writes_robustbenchs_model_info_from_the_runs_autoattack_on_the_whole_test_set(
        regs, tiny_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _cifar_run(tmp_path / "run", regs, tiny_cifar, final={"clean": 0.625, "pgd20": 0.5, "autoattack": 0.375})
    out = tmp_path / "hub"
    assert main(["export", str(run), str(out), "--robustbench", "Lee2026Tiny_convnet_xs",
                 "--model-info", "link=https://arxiv.org/abs/2601.00001", "--model-info", "authors=A. Lee, B. Kim",
                 "--model-info", "additional_data=true"]) == 0
    path = out / "model_info" / "cifar10" / "Linf" / "Lee2026Tiny_convnet_xs.json"
    assert f"RobustBench model info: {path}" in capsys.readouterr().out
    info = json.loads(path.read_text())
    assert list(info) == list(ROBUSTBENCH_FILE)
    assert info == {
        "link": "https://arxiv.org/abs/2601.00001", "name": "convnet_xs trained with robust-distill",
        "authors": "A. Lee, B. Kim", "additional_data": True, "number_forward_passes": 1, "dataset": "cifar10",
        "venue": "", "architecture": "convnet_xs", "eps": "8/255", "clean_acc": "62.50", "reported": "37.50",
        "autoattack_acc": "37.50", "unreliable": False,
        "footnote": "Trained with robust-distill: method rslad (Zi et al., ICCV 2021, Eq. 6-7; "
                    "zibojia/RSLAD/rslad_loss.py), teachers robust timm:convnet_xs."}
    # the card counts the examples from the per-example file: all 8 test images
    assert "| cifar10 | Linf | 8/255 | 62.50 | 50.00 | 37.50 | 8 (test split) |" in (out / "README.md").read_text()


@pytest.mark.parametrize(("final", "n", "eps", "args", "message"), [
    ({"clean": 0.5, "pgd20": 0.25}, 8, 8 / 255, [],
     "needs clean and AutoAttack (standard) accuracy on the test set; the run recorded clean, pgd20 on the test "
     "split. Measure it with `robust-distill export RUN OUT --evaluate clean,autoattack --n-examples 0`"),
    ({"clean": 0.5, "autoattack_apgd": 0.25}, 8, 8 / 255, [], "the run recorded clean, autoattack_apgd"),
    (None, 8, 8 / 255, [], "the run recorded no evaluation"),
    ({"clean": 0.5, "autoattack": 0.25}, 4, 8 / 255, [],
     "AutoAttack ran on 4 of the 8 test images; RobustBench reports the whole test set."),
    ({"clean": 0.5, "autoattack": 0.25}, 8, 4 / 255, [],
     "RobustBench ranks cifar10 at eps 8/255; this run was evaluated at 4/255."),
    ({"clean": 0.5, "autoattack": 0.25}, 8, 8 / 255, ["--model-info", "clean_acc=99", "--model-info", "paper=x"],
     "RobustBench model info: 'paper' is not a key of RobustBench's files; 'clean_acc' comes from the "
     "evaluation. Keys you can set: link, name, authors, additional_data, number_forward_passes, venue, "
     "architecture, reported, footnote, unreliable."),
    ({"clean": 0.5, "autoattack": 0.25}, 8, 8 / 255, ["--robustbench", "../x"],
     "RobustBench model name '../x': use letters, digits"),
], ids=["no autoattack", "apgd only", "no final evaluation", "part of the test set", "eps 4/255", "keys", "name"])
def test_export_refuses_a_model_info_it_cannot_fill_and_writes_nothing(
        regs, tiny_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], final: dict[str, float] | None,
        n: int, eps: float, args: list[str], message: str) -> None:
    run = _cifar_run(tmp_path / "run", regs, tiny_cifar, final=final, n=n, eps=eps)
    out = tmp_path / "hub"
    assert main(["export", str(run), str(out), "--robustbench", "Lee2026Tiny", *args]) == 3
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one paragraph, no traceback
    assert not out.exists()


def test_a_dataset_without_a_robustbench_leaderboard_is_refused_before_any_evaluation(
        regs, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import robust_distill.cli.export

    _checkpoint(tmp_path / "c.pt", regs, {})  # synthetic
    monkeypatch.setattr(robust_distill.cli.export, "evaluate", lambda *a, **k: pytest.fail("evaluated before refusing"))
    assert main(["export", str(tmp_path / "c.pt"), str(tmp_path / "hub"), "--robustbench", "X",
                 "--evaluate", "clean,autoattack", "--n-examples", "0"]) == 3
    assert ("RobustBench has no L-inf leaderboard for 'synthetic' that this export can enter: its L-inf "
            "leaderboards here are cifar10, cifar100") in capsys.readouterr().err
    assert main(["export", str(tmp_path / "c.pt"), str(tmp_path / "hub"), "--robustbench", "X",
                 "--evaluate", "clean,pgd20"]) == 2
    assert "--robustbench needs clean and AutoAttack accuracy on the whole test set" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "c.pt"), str(tmp_path / "hub"), "--model-info", "venue"]) == 2
    err = capsys.readouterr().err
    assert "--model-info 'venue': expected KEY=VALUE" in err and "give --robustbench MODEL_NAME too" in err
    assert not (tmp_path / "hub").exists()


@pytest.mark.slow
def test_a_trained_runs_final_autoattack_becomes_its_model_info(regs, tiny_raw, tiny_cifar: Path,
                                                                 tmp_path: Path) -> None:
    """End to end: a run with eval.final_attacks [clean, autoattack] on the whole (tiny) CIFAR-10 test set."""
    raw = tiny_raw("pgd_at")
    raw["data"] = {"dataset": "cifar10", "root": str(tiny_cifar), "val_size": 8, "batch_size": 16,
                   "eval_batch_size": 64}
    raw["optim"]["epochs"] = 1
    raw["eval"].update(n_examples=8, final_attacks=["clean", "autoattack"], final_n_examples=None)
    summary = train(resolve_config(raw, regs))
    out = tmp_path / "hub"
    assert main(["export", raw["output_dir"], str(out), "--robustbench", "Tiny_convnet_xs"]) == 0
    info = json.loads((out / "model_info" / "cifar10" / "Linf" / "Tiny_convnet_xs.json").read_text())
    best = summary["final"]["best"]
    assert (info["clean_acc"], info["autoattack_acc"]) == (f"{100 * best['clean']:.2f}",
                                                          f"{100 * best['autoattack']:.2f}")
    assert info["footnote"] == "Trained with robust-distill: method pgd_at (Madry et al., ICLR 2018, Eq. 2.1; " \
                               "MadryLab/cifar10_challenge)."
