"""The CUDA path (marker ``cuda``: skipped where no GPU is visible, so CI only collects these).

Run on a GPU machine with ``pytest -m cuda tests`` (``benchmarks/gpu/device_run.sh`` does it on a bare one, in
the collected order and then reversed with ``--reverse-order``: every test here restores whatever process-wide
CUDA state it changes, so the order does not matter).
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from robust_distill.engine import monitor
from robust_distill.engine.evaluation import evaluate
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import load_checkpoint

from . import sharded_eval_worker as worker
from .subproc import child_env
from .test_precision import _fixed_batch_run

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]


def set_sync_debug_mode(mode: str | int) -> None:
    """``torch.cuda.set_sync_debug_mode(mode)`` with torch's expected warning silenced.

    torch warns that the mode is a prototype feature when it sets it; the suite turns warnings into errors, and
    that error used to escape *after* the mode was set, leaving "error" on for every later CUDA test.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Synchronization debug mode is a prototype feature")
        torch.cuda.set_sync_debug_mode(mode)


@contextlib.contextmanager
def sync_debug_mode(mode: str | int) -> Iterator[None]:
    """The sync debug mode ``mode`` for the block, the previous one restored whatever is raised."""
    before = torch.cuda.get_sync_debug_mode()
    try:
        set_sync_debug_mode(mode)
        yield
    finally:
        set_sync_debug_mode(before)


@pytest.fixture(autouse=True)
def _cuda_state():
    """Every test starts from the same process-wide CUDA state and leaves it so: float32 convolutions and
    products (exact comparisons; PyTorch allows TF32 in convolutions by default), no sync debug mode, no
    compiled graphs, cuDNN's flags as found."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    set_sync_debug_mode(0)
    try:
        yield
    finally:
        set_sync_debug_mode(0)
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = flags[:4]
        torch.use_deterministic_algorithms(flags[4])
        torch._dynamo.reset()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _differences(a: torch.Tensor, b: torch.Tensor) -> str:
    """The compared numbers, for a failure message."""
    a, b = a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten()
    diff = (a - b).abs()
    rel = diff / b.abs().clamp_min(1e-12)
    i = int(diff.argmax())
    return (f"max |a-b| = {diff.max().item():.3e} at index {i} (a={a[i].item():.8g}, b={b[i].item():.8g}), "
            f"max relative {rel.max().item():.3e}, |a-b|/|b| = {(diff.norm() / b.norm().clamp_min(1e-12)).item():.3e}, "
            f"{int((diff > 1e-5 + 1e-4 * b.abs()).sum())} of {a.numel()} outside rtol 1e-4/atol 1e-5")


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
    from robust_distill.engine.trainer import _train_epoch

    _, _, run = _fixed_batch_run(regs, precision, method, device="cuda", log_every=1000)  # warm-up: CUDA, cuDNN
    read = monitor.StepMonitor.read

    def read_allowed(self):
        with sync_debug_mode(0):
            return read(self)

    monkeypatch.setattr(monitor.StepMonitor, "read", read_allowed)

    torch.cuda.synchronize()
    with sync_debug_mode("error"):
        row = _train_epoch(run, 1)
    assert math.isfinite(row["train_loss"])


def test_compiled_forward_and_input_gradient_match_eager_on_cuda(regs) -> None:
    """One compiled forward and input gradient (what every PGD iteration computes) equal the eager ones up to
    float32 rounding, in train and in eval mode: a real difference between inductor and eager fails here."""
    torch.manual_seed(0)
    eager, compiled = (regs.student_sources.get("timm").build("convnet_xs", input_shape=(3, 16, 16),
                                                              num_classes=4).cuda() for _ in range(2))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x, y = torch.rand(32, 3, 16, 16, device="cuda"), torch.randint(0, 4, (32,), device="cuda")
    for training in (False, True):
        outs = []
        for model in (eager, compiled):
            model.train(training)
            xi = x.clone().requires_grad_(True)
            logits = model(xi)
            grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), xi)
            outs.append((logits.detach(), grad))
        (le, ge), (lc, gc) = outs
        mode = "train" if training else "eval"
        assert torch.allclose(lc, le, rtol=1e-4, atol=1e-5), f"{mode} logits: {_differences(lc, le)}"
        assert torch.allclose(gc, ge, rtol=1e-4, atol=1e-6), f"{mode} input gradient: {_differences(gc, ge)}"


def test_compiled_step_matches_eager_on_cuda(regs) -> None:
    """Three AdaAD steps, compiled against eager, with deterministic cuDNN and TF32 off in both.

    Each step runs a 10-iteration sign-gradient PGD: a rounding difference in an input gradient that is nearly
    zero flips its sign and moves that pixel by 2 step sizes, so trajectories agree to about 1e-3, not to the
    1e-4 of one forward (the previous tolerance; CPU inductor meets it, this test failed on an H200 with it).
    The message shows the compared numbers.
    """
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    eager_losses, eager_w, _ = _fixed_batch_run(regs, "fp32", "adaad", device="cuda")
    torch._dynamo.reset()
    losses, w, _ = _fixed_batch_run(regs, "fp32", "adaad", device="cuda", compile=True)
    shown = f"compiled losses {losses} vs eager {eager_losses}; weights: {_differences(w, eager_w)}"
    assert losses == pytest.approx(eager_losses, rel=1e-3), shown
    assert ((w - eager_w).norm() / eager_w.norm()).item() < 1e-3, shown
    torch._dynamo.reset()
    losses_bf16, w_bf16, _ = _fixed_batch_run(regs, "bf16", "adaad", device="cuda", compile=True)
    assert all(math.isfinite(v) for v in losses_bf16) and torch.isfinite(w_bf16).all(), losses_bf16


def test_sharded_evaluation_on_cuda_equals_unsharded(tmp_path: Path) -> None:
    """Two processes on the GPU (gloo, as NCCL needs one GPU per process) against one."""
    env = child_env({"RD_DIST_BACKEND": "gloo"})  # the workers import what this process imports
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
    from robust_distill.core.manager import get_plugin_manager, get_registries
    from robust_distill.engine.distributed import DistContext
    from robust_distill.engine.run import Run

    regs = get_registries()
    on = Run(tiny_config("pgd_at", overrides=["device=cuda"]), regs, get_plugin_manager(), DistContext())
    off = Run(tiny_config("pgd_at", overrides=["device=cuda", "data.on_device=false"]), regs,
              get_plugin_manager(), DistContext())
    assert on.data.train_x.is_cuda and not off.data.train_x.is_cuda and torch.backends.cudnn.is_available()
