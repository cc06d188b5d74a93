"""The Python API (issue 22, item 2): ``robust_distill.train``, ``evaluate``, ``load_model`` and the listings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robust_distill as rd
from robust_distill.api import Evaluation, _override_list
from robust_distill.cli import main
from robust_distill.config import resolve_config
from robust_distill.core.registry import UnknownNameError
from robust_distill.engine.evaluation import EvalResult
from robust_distill.errors import ConfigError, HubError, InputError
from robust_distill.export import export_model
from robust_distill.files.checkpoint import build_from_checkpoint, load_checkpoint

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_train_evaluate_and_load_model_give_the_runs_own_numbers(regs, tiny_raw, tmp_path: Path) -> None:
    raw = tiny_raw("pgd_at")
    run = Path(raw["output_dir"])
    summary = rd.train(raw, overrides={"optim.epochs": 1, "eval.final_attacks": ["clean", "pgd20"],
                                       "eval.final_n_examples": 32})
    assert summary == json.loads((run / "summary.json").read_text()) and summary["epochs"] == 1

    # load_model: the best checkpoint's network, in eval mode, from the run folder or the file
    model = rd.load_model(run)
    original, _ = build_from_checkpoint(run / "best.pt", regs)
    x = torch.rand(4, 3, 8, 8)
    assert not model.training and torch.equal(model(x), original(x))
    assert torch.equal(rd.load_model(run / "last.pt")(x), rd.load_model(run, which="last")(x))
    export_model(run, tmp_path / "hub", regs)  # an exported folder, with or without hf-hub:
    assert torch.equal(rd.load_model(tmp_path / "hub")(x), model(x))
    assert torch.equal(rd.load_model(f"hf-hub:{tmp_path / 'hub'}")(x), model(x))

    # evaluate: the final test evaluation's numbers exactly, per example too (same attacks, seed, chunks)
    ev = rd.evaluate(run, attacks="clean,pgd20", n_examples=32, batch_size=64)
    assert (ev.dataset, ev.split, ev.n, ev.eps) == ("synthetic", "test", 32, 8 / 255)
    assert ev.accuracy == summary["final"]["best"]
    records = load_checkpoint(run / "test_correct_best.pt")
    assert all(torch.equal(ev.correct[k], records["correct"][k]) for k in ("clean", "pgd20"))
    assert torch.equal(ev.indices, records["indices"])
    # a module with tensors: the same numbers
    bundle = regs.datasets.get("synthetic").load(**raw["data"]["options"])
    ev2 = rd.evaluate(model, data=(bundle.test_x, bundle.test_y), attacks=["clean", "pgd20"], n_examples=32,
                      batch_size=64, eps="8/255")
    assert ev2.accuracy == ev.accuracy and torch.equal(ev2.labels, ev.labels)

    # the eval command is built on it: the same rows, from the run folder
    assert main(["eval", str(run), "--attacks", "clean,pgd20", "--n-examples", "32", "--batch-size", "64",
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["results"] == ev.rows()

    # train again: the run is complete, it resumes at its end and returns the same summary
    assert rd.train(raw, overrides=["optim.epochs=1", "eval.final_attacks=[clean, pgd20]",
                                    "eval.final_n_examples=32"]) == summary


def test_overrides_as_a_dict_are_the_command_lines_set(regs, tiny_raw) -> None:
    overrides = {"optim.epochs": 3, "threat.eps": "4/255", "eval.attacks": ["clean", "pgd20", "fgsm"],
                 "output_dir": "runs/x", "data.train_subset": None, "channels_last": True}
    sets = ["optim.epochs=3", "threat.eps=4/255", "eval.attacks=[clean, pgd20, fgsm]", "output_dir=runs/x",
            "data.train_subset=null", "channels_last=true"]
    assert resolve_config(tiny_raw(), regs, overrides=_override_list(overrides)) == \
        resolve_config(tiny_raw(), regs, overrides=sets)
    assert _override_list({"seed": "7"}) == ['seed="7"']  # a string stays a string


def test_evaluation_rows_and_worst_case_by_hand() -> None:
    correct = {"clean": [1, 1, 1, 0], "pgd20": [1, 0, 1, 0], "cw_inf": [1, 1, 0, 0]}
    result = EvalResult(4, {k: torch.tensor(v, dtype=torch.bool) for k, v in correct.items()})
    ev = Evaluation("m", "d", "test", 0.1, 0, torch.arange(4), torch.zeros(4), result,
                    {"clean": "Clean", "pgd20": "PGD-20", "cw_inf": "CW"})
    assert ev.accuracy == {"clean": 0.75, "pgd20": 0.5, "cw_inf": 0.5}
    assert ev.worst_case() == 0.25 and ev.worst_case(["clean", "pgd20"]) == 0.5  # only example 0 survives both
    assert ev.rows() == [{"attack": "clean", "label": "Clean", "accuracy": 0.75},
                         {"attack": "pgd20", "label": "PGD-20", "accuracy": 0.5},
                         {"attack": "cw_inf", "label": "CW", "accuracy": 0.5},
                         {"attack": "worst_case", "label": "Worst case over the attacks above", "accuracy": 0.25}]


def test_the_listings_are_the_registries(regs) -> None:
    assert rd.registries() is regs
    assert rd.list_methods() == regs.methods.names()
    assert {"pgd_at", "trades", "rslad", "adaad"} <= set(rd.list_methods())
    assert rd.list_methods("*ard*") == ["ard", "bmtard", "ciard", "ciard_no_push", "ciard_paper", "mmard",
                                           "mtard"]
    assert {"clean", "pgd20", "autoattack"} <= set(rd.list_attacks()) and rd.list_attacks("pgd2*") == [
        "pgd20", "pgd20_inplane", "pgd20_outplane", "pgd20_trades"]


def test_api_errors_are_the_projects(tiny_raw, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method: Unknown method 'rsald'. Did you mean 'rslad'\?"):
        rd.train(tiny_raw("rsald"))
    with pytest.raises(ConfigError, match=r"optim.epochs: expected an integer, got 'many'"):
        rd.train(tiny_raw(), overrides={"optim.epochs": "many"})
    with pytest.raises(ConfigError, match="config.yaml"):
        rd.train(tmp_path / "config.yaml")  # no such file: the config error names it
    model = torch.nn.Linear(2, 2)
    with pytest.raises(InputError, match="give dataset= \\(one of: .*fashion_mnist.*\\) or data="):
        rd.evaluate(model)
    with pytest.raises(UnknownNameError, match="Unknown eval attack 'pgd21'. Did you mean 'pgd20'"):
        rd.evaluate(model, data=(torch.rand(2, 2), torch.zeros(2, dtype=torch.long)), attacks=["pgd21"])
    with pytest.raises(HubError, match="has no best.pt \\(checkpoints there: none\\)"):
        rd.load_model(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_fashion_mnist_notebook_example_runs_at_a_tiny_budget(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    example = load_script("examples/fashion_mnist_notebook.py")
    summary, ev = example.main(str(tmp_path / "run"), n_examples=64, **{
        "data.train_subset": 128, "data.val_size": 64, "optim.epochs": 1, "threat.steps": 2,
        "eval.n_examples": 64, "eval.final_n_examples": 64})
    assert summary["method"] == "rslad" and ev.dataset == "fashion_mnist" and ev.n == 64
    assert ev.accuracy == summary["final"]["best"]  # loaded and evaluated again: the run's own numbers
    out = capsys.readouterr().out
    assert (f"clean {100 * ev.accuracy['clean']:.2f}%, PGD-20 {100 * ev.accuracy['pgd20']:.2f}% on 64 test images"
            in out)
