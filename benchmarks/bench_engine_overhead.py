"""Training-step time of the engine against a hand-written loop with the same math (ratio, same run).

Both train AdaAD (inner KL(S(x')||T(x')) with frozen parameters, outer KL_mean(S(x')||T(x')), SGD)
on the same Fashion-MNIST-shaped batches; the engine adds the Step object, cached outputs, registry
parts, batch augmentation and logging. Rounds are interleaved (engine, hand, engine, hand, ...). With
``--precision bf16`` both run under autocast with the run's fast paths (robust_distill.engine.fastpath: the teacher
held in bf16, the attack's weights cast once per attack); ``--profile`` prints the top operators of one step of
each loop (torch.profiler; with ``--device cuda`` also kernel launches and host synchronisations per step), to see
what the engine does that the hand loop does not.

Usage: python benchmarks/bench_engine_overhead.py [--batches 8] [--repeats 3] [--precision bf16] [--profile]
[--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from robust_distill.config import resolve_config
from robust_distill.core.attacks import frozen_parameters, model_mode
from robust_distill.core.manager import get_plugin_manager, get_registries
from robust_distill.data.memory import augment, epoch_batches, to_device, to_float
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.run import Run
from robust_distill.engine.trainer import _train_epoch

RAW = {
    "method": "adaad", "device": "cpu", "output_dir": "/tmp/rd-bench-overhead", "channels_last": False,
    "data": {"dataset": "synthetic", "val_size": 16, "batch_size": 128,
             "options": {"n_train": 0, "channels": 1, "size": 28, "num_classes": 10}},
    "student": "timm:convnet_s", "teachers": {"robust": "timm:convnet_m"},
    "threat": {"eps": 0.1, "step_size": 0.025, "steps": 10},
    "eval": {"attacks": ["clean"], "select": "clean"},
}


def hand_written_epoch(run: Run, epoch: int) -> None:
    """AdaAD as one would write it by hand, same data order and augmentation as the engine."""
    cfg, data, student, teacher = run.config, run.data, run.student, run.teachers["robust"]
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    student.train()
    eps, alpha = cfg.threat.eps, cfg.threat.step_size
    attack_weights = run.attack_weights() or nullcontext
    for idx in epoch_batches(data.train_x.shape[0], cfg.data.batch_size, seed=cfg.seed, epoch=epoch):
        x = augment(to_float(data.train_x[to_device(idx, run.device)], run.device), data.crop_padding, data.flip)
        with run.step_autocast():
            loss = _hand_loss(student, teacher, x, eps, alpha, cfg.threat.steps, attack_weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        _ = loss.item()


def _hand_loss(student, teacher, x, eps, alpha, steps, attack_weights):
    with model_mode(student, False), frozen_parameters(student, teacher), attack_weights():
        x_adv = (x + 0.001 * torch.randn_like(x)).detach()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            obj = F.kl_div(F.log_softmax(student(x_adv).float(), 1), F.softmax(teacher(x_adv).float(), 1),
                           reduction="sum")
            (g,) = torch.autograd.grad(obj, x_adv)
            x_adv = (x + (x_adv.detach() + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    with torch.no_grad():
        t_adv = teacher(x_adv)
        student(x)  # the official main.py's clean forward (its BN statistics), as the engine's AdaAD does
    s_adv = student(x_adv)
    return F.kl_div(F.log_softmax(s_adv.float(), 1), F.softmax(t_adv.float(), 1), reduction="sum") / s_adv.numel()


#: host-device synchronisations as the CUDA runtime records them
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _profile(run: Run) -> None:
    """Per loop, one epoch of ``--batches`` steps: operator calls, kernel launches and host synchronisations per
    step (CUDA), and the top operators by self time."""
    cuda = run.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    steps = run.steps_per_epoch
    for name, fn in (("engine", _train_epoch), ("hand-written", hand_written_epoch)):
        fn(run, 98)  # warm-up (cuDNN autotuning, compilation)
        with torch.profiler.profile(activities=activities) as prof:
            fn(run, 99)
            if cuda:
                torch.cuda.synchronize()
        ops = prof.key_averages()
        count = {e.key: e.count for e in ops}
        launches = sum(n for k, n in count.items() if k.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
        syncs = sum(count.get(k, 0) for k in SYNC_EVENTS)
        print(f"== {name}: per step {sum(e.count for e in ops) / steps:.0f} profiler events, "
              f"{launches / steps:.0f} kernel launches, {syncs / steps:.1f} host syncs")
        print(ops.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--profile", action="store_true", help="profile an epoch of each loop and stop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then with --profile: kernels and syncs)")
    args = parser.parse_args()
    RAW["data"]["options"]["n_train"] = 128 * args.batches + 16
    RAW["optim"] = {"precision": args.precision}
    RAW["device"] = args.device
    regs = get_registries()
    run = Run(resolve_config(RAW, regs), regs, get_plugin_manager(), DistContext())
    if args.profile:
        _profile(run)
        return
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"engine": [], "hand-written": []}
    for r in range(args.repeats + 1):
        for name, fn in (("engine", _train_epoch), ("hand-written", hand_written_epoch)):
            sync()
            t0 = time.perf_counter()
            fn(run, r)
            sync()
            if r:
                times[name].append((time.perf_counter() - t0) / args.batches)
    base = statistics.median(times["hand-written"])
    print(f"AdaAD training step ({args.precision}), convnet_s <- convnet_m, batch 128, 28x28, "
          f"{torch.get_num_threads()} threads, "
          f"median of {args.repeats} x {args.batches} steps")
    print("| loop | s / step | ratio to hand-written |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {statistics.median(ts) / base:.3f} |")


if __name__ == "__main__":
    main()
