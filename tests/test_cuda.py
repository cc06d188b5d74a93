"""The CUDA path (marker ``cuda``: skipped where no GPU is visible, so CI only collects these).

Run on a GPU machine with ``pytest -m cuda tests`` (``benchmarks/gpu/device_run.sh`` does it on a bare one).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robust_distill import monitor
from robust_distill.checkpoint import load_checkpoint
from robust_distill.evaluation import evaluate
from robust_distill.trainer import train

from . import sharded_eval_worker as worker
from .test_precision import _fixed_batch_run

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fp32_matmuls():
    """Exact comparisons need float32 convolutions and products (PyTorch allows TF32 in convolutions)."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.mark.parametrize("method", ["pgd_at", "adaad"])
def test_training_steps_in_fp32_bf16_fp16_on_cuda(regs, method: str) -> None:
    ref_losses, ref_w, _ = _fixed_batch_run(regs, "fp32", method, device="cuda")
    for precision, rel_w in (("bf16", 1e-2), ("fp16", 5e-2)):
        losses, w, run = _fixed_batch_run(regs, precision, method, device="cuda")
        assert all(math.isfinite(v) for v in losses) and torch.isfinite(w).all(), precision
        assert ((w - ref_w).norm() / ref_w.norm()).item() < rel_w, precision
        if precision == "bf16":
            assert losses == pytest.approx(ref_losses, rel=5e-2)
        else:
            assert run.input_grad_scale is not None and run.scaler.get_scale() >= 1.0


@pytest.mark.parametrize("method", ["pgd_at", "trades", "rslad", "adaad"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_training_loop_never_waits_for_the_gpu_between_reads(regs, monkeypatch, method: str,
                                                                 precision: str) -> None:
    """``torch.cuda.set_sync_debug_mode("error")`` raises on any host synchronisation: none happens in the
    steps of an epoch, only in the once-per-interval read of the diagnostics."""
    from robust_distill.trainer import _train_epoch

    _, _, run = _fixed_batch_run(regs, precision, method, device="cuda", log_every=1000)  # warm-up: CUDA, cuDNN
    read = monitor.StepMonitor.read

    def read_allowed(self):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return read(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(monitor.StepMonitor, "read", read_allowed)

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        row = _train_epoch(run, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(row["train_loss"])


def test_compiled_step_matches_eager_on_cuda(regs) -> None:
    eager_losses, eager_w, _ = _fixed_batch_run(regs, "fp32", "adaad", device="cuda")
    torch._dynamo.reset()
    losses, w, _ = _fixed_batch_run(regs, "fp32", "adaad", device="cuda", compile=True)
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    assert torch.allclose(w, eager_w, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    losses_bf16, w_bf16, _ = _fixed_batch_run(regs, "bf16", "adaad", device="cuda", compile=True)
    assert all(math.isfinite(v) for v in losses_bf16) and torch.isfinite(w_bf16).all()


def test_sharded_evaluation_on_cuda_equals_unsharded(tmp_path: Path) -> None:
    """Two processes on the GPU (gloo, as NCCL needs one GPU per process) against one."""
    env = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "RD_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "sharded_eval_worker.py"), str(tmp_path / "two.pt"), "cuda"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_checkpoint(tmp_path / "two.pt")
    one = worker.run("cuda").correct
    for name in one:
        assert torch.equal(two[name], one[name]), name


def test_autoattack_on_cuda_equals_cpu() -> None:
    """The reference AutoAttack draws its random numbers on the CPU: same per-example results on both."""
    model, x, y, attacks = worker.setup()
    attacks = {k: attacks[k] for k in ("autoattack",)}
    cpu = evaluate(model, x, y, attacks, batch_size=8, seed=3).correct["autoattack"]
    gpu = evaluate(model.cuda(), x, y, attacks, batch_size=8, seed=3, device="cuda").correct["autoattack"]
    assert torch.equal(cpu, gpu) and 0 < cpu.float().mean() < 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # deterministic mode warns about kernels it cannot check
def test_resumed_run_equals_uninterrupted_on_cuda(tiny_config, tmp_path: Path) -> None:
    over = ["device=cuda", "deterministic=true", "optim.epochs=3", "optim.precision=bf16"]
    full = tiny_config("rslad", True, overrides=over + [f"output_dir={tmp_path / 'full'}"])
    part = tiny_config("rslad", True, overrides=over + [f"output_dir={tmp_path / 'part'}"])
    train(full)
    assert train(part, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    train(part)
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_stays_on_the_gpu_when_it_fits(tiny_config) -> None:
    from robust_distill.distributed import DistContext
    from robust_distill.plugin import get_plugin_manager, get_registries
    from robust_distill.trainer import Run

    regs = get_registries()
    on = Run(tiny_config("pgd_at", overrides=["device=cuda"]), regs, get_plugin_manager(), DistContext())
    off = Run(tiny_config("pgd_at", overrides=["device=cuda", "data.on_device=false"]), regs,
              get_plugin_manager(), DistContext())
    assert on.data.train_x.is_cuda and not off.data.train_x.is_cuda and torch.backends.cudnn.is_available()
