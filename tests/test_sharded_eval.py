"""Sharded evaluation: each process evaluates its share of fixed chunks, and the gathered per-sample results
equal a single-process evaluation exactly, for every attack (AutoAttack included; see
``ReferenceAutoAttack``'s docstring for why the chunks are fixed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robust_distill.engine import evaluation
from robust_distill.engine.evaluation import chunk_size, evaluate
from robust_distill.files.checkpoint import load_checkpoint

from . import sharded_eval_worker as worker
from .subproc import child_env

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.mark.slow
def test_every_process_computes_what_a_single_process_computes_for_its_chunks(monkeypatch) -> None:
    """The chunk schedule, without processes: ranks 0 and 1 of 2 (collective replaced by the identity)
    together give the single-process result, random-start attacks and AutoAttack's APGD stages included."""
    model, x, y, attacks = worker.setup()
    attacks = {k: attacks[k] for k in ("clean", "pgd20", "apgd_ce", "autoattack_apgd")}
    assert chunk_size(attacks["autoattack_apgd"], 8, len(x)) == 8 and chunk_size(attacks["pgd20"], 6, len(x)) == 6
    single = evaluate(model, x, y, attacks, batch_size=6, seed=3)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(evaluation, "rank_and_world", lambda r=rank: (r, 2))
        monkeypatch.setattr(evaluation, "all_reduce_tensor", lambda t: t)
        shares.append(evaluate(model, x, y, attacks, batch_size=6, seed=3))
    for name in attacks:
        a, b = shares[0].correct[name], shares[1].correct[name]
        assert not (a & b).any()  # no example is evaluated twice
        assert torch.equal(a | b, single.correct[name]), name
    assert 0 < single.accuracy["pgd20"] < 1 and 0 < single.accuracy["autoattack_apgd"] < 1


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_results_exactly(tmp_path: Path) -> None:
    _run([*TORCHRUN, str(ROOT / "tests" / "sharded_eval_worker.py"), str(tmp_path / "two.pt")], tmp_path)
    two = load_checkpoint(tmp_path / "two.pt")
    one = worker.run().correct
    assert two.keys() == one.keys() == {"clean", "fgsm", "pgd20", "cw_inf", "apgd_ce", "autoattack",
                                        "autoattack_apgd"}
    for name in one:
        assert torch.equal(two[name], one[name]), name
    robust = one["autoattack"].float().mean().item()
    assert 0 < robust < one["pgd20"].float().mean().item() < 1  # AutoAttack breaks more than PGD, not all


@pytest.mark.slow
def test_eval_command_under_torchrun_equals_one_process(tiny_config, tmp_path: Path) -> None:
    from robust_distill.engine.trainer import train

    cfg = tiny_config("pgd_at", overrides=["optim.epochs=1", f"output_dir={tmp_path / 'run'}",
                                           "eval.attacks=[clean]", "eval.select=clean"])
    train(cfg)
    args = ["-m", "robust_distill", "eval", str(tmp_path / "run" / "last.pt"), "--attacks", "clean,pgd20,cw_inf",
            "--n-examples", "20", "--batch-size", "6", "--device", "cpu"]
    one = _run([sys.executable, *args, "--out", str(tmp_path / "one.json")], tmp_path)
    two = _run([*TORCHRUN, *args, "--out", str(tmp_path / "two.json")], tmp_path)
    assert two.stdout.count("| attack |") == 1 and one.stdout.count("| attack |") == 1  # rank 0 prints
    a, b = (load_checkpoint(tmp_path / f"{n}.pt")["correct"] for n in ("one", "two"))
    assert all(torch.equal(a[k], b[k]) for k in ("clean", "pgd20", "cw_inf"))
