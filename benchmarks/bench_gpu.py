"""GPU throughput of robust-distill against official-style training loops, measured in one process.

For a CIFAR-stem ResNet-18 student (``timm:resnet18_cifar``) and WRN-34-10 / WRN-70-16 teachers
(``benchmarks/wide_resnet.py``, RobustBench's architectures, random weights), random 32x32 inputs, batch 128,
eps 8/255 with 10 PGD steps of 2/255, per method (``pgd_at``, ``trades``, ``rslad``, ``adaad``, ``ciard``):

* ``official``: the method's official training step written out here as its code does it: fp32, parameters
  left trainable during the attack, the extra clean forwards of the official code, no compile, contiguous
  tensors (PyTorch's default TF32 setting for convolutions, as the official scripts get); CIARD's includes
  its per-step host work (B-MTARD's entropy temperatures and loss weights, the push scale from the KL values,
  all read with ``.item()``) and computes ``T_nat(x)`` once, as ``CIARD.py`` does;
* ``engine ...``: robust-distill's training loop (``trainer._train_epoch``: data on the GPU, batch augmentation,
  ``Step``, registry parts, device-side diagnostics), channels-last on CUDA, in the settings of
  :data:`ENGINE_ROWS`: ``fp32``; ``bf16`` (constant teachers and the attack's frozen models held in bf16:
  bitwise the plain path, always on); ``+fold`` (``optim.fold_bn: true``: BatchNorm folded into the
  convolutions of the constant teachers and of the student during the attack); ``+compile``
  (``torch.compile``, default mode); ``+cudagraphs`` (``optim.compile: reduce-overhead``);
* ``hand ...`` (AdaAD and RSLAD): the engine's math written as a plain loop over the *same* model objects,
  optimizer and fast paths as the engine row of that setting: the engine's overhead is the ratio of the two.

The "best" table gives, per method, the fastest engine row against the official loop, and the targets of
issue 19 (AdaAD >= 3.0x, the others >= 2.0x at batch 128).

Rounds are interleaved (official, engine fp32, hand fp32, ...; then again), after one warm-up round that
also compiles; images/s is the median over rounds; peak GPU memory is ``max_memory_allocated`` over a
variant's rounds. Then evaluation throughput on the student: PGD-20 and AutoAttack standard (reference
code) in fp32, and AutoAttack in its worst case (a wrapper that keeps the student's computation but fixes
its prediction, so that no point is ever broken and every stage runs on every point to its end) on K chunks
of ``--aa-chunk`` images (500: RobustBench's) attacked by K worker processes at once, for each K of
``--aa-concurrency`` (``evaluate_set(concurrency=K)``; worker start-up included; ``auto``: what evaluation
picks on this GPU): images/s, and the ratio to concurrency 1. Hours for 200 CIFAR-10 epochs = 200 * 50000 /
images per second.

Jobs run in priority order within ``--budget-s`` (the targets first: AdaAD and RSLAD with WRN-34-10), and
the JSON and Markdown results are rewritten after each job, so a run cut short keeps what it measured.

Usage::

    python benchmarks/bench_gpu.py                  # CUDA: plan "core" into benchmarks/results/gpu/
    python benchmarks/bench_gpu.py --plan full      # adds the WRN-70-16 teacher
    python benchmarks/bench_gpu.py --smoke          # CPU-sized correctness check (tiny models, seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wide_resnet import DMWideResNet, WideResNet  # noqa: E402

from robust_distill import TeacherSource, ThreatModel  # noqa: E402
from robust_distill.config import resolve_config  # noqa: E402
from robust_distill.core.attacks import frozen_parameters, model_mode  # noqa: E402
from robust_distill.core.manager import get_plugin_manager, get_registries  # noqa: E402
from robust_distill.data.memory import augment, epoch_batches, to_device, to_float  # noqa: E402
from robust_distill.engine.distributed import DistContext  # noqa: E402
from robust_distill.engine.evaluation import auto_concurrency, evaluate, make_eval_attacks  # noqa: E402
from robust_distill.engine.run import Run, build_student
from robust_distill.engine.trainer import _train_epoch  # noqa: E402
from robust_distill_plugins.ciard import magnitude_scale  # noqa: E402
from robust_distill_plugins.two_teacher import entropy_temperatures, neg_entropy, normalised_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCH_IMAGES, EPOCHS = 50_000, 200
METHODS_WITH_TEACHER = ("rslad", "adaad", "ciard")
#: engine rows: name -> (optim.precision, optim.compile, optim.fold_bn); compiled rows need --compile
ENGINE_ROWS: dict[str, tuple[str, bool | str, bool]] = {
    "engine fp32": ("fp32", False, False),
    "engine bf16": ("bf16", False, False),
    "engine bf16+fold": ("bf16", False, True),
    "engine bf16+fold+compile": ("bf16", True, True),
    "engine bf16+fold+cudagraphs": ("bf16", "reduce-overhead", True),
}
#: best engine row / official loop wanted at batch 128 (issue 19)
TARGETS = {"adaad": 3.0, "rslad": 2.0, "trades": 2.0, "pgd_at": 2.0, "ciard": 2.0}


# -------------------------------------------------------------------------------------------------
# Models
# -------------------------------------------------------------------------------------------------

class BenchTeachers(TeacherSource):
    """``bench:wrn34_10`` / ``bench:wrn70_16`` (and the tiny ``bench:wrn10_1`` / ``bench:dm10_1`` of --smoke),
    random weights, registered for this process only."""

    ARCHS: dict[str, Callable[[], nn.Module]] = {
        "wrn34_10": lambda: WideResNet(34, 10, 10), "wrn70_16": lambda: DMWideResNet(10, 70, 16),
        "wrn10_1": lambda: WideResNet(10, 10, 1), "dm10_1": lambda: DMWideResNet(10, 10, 1)}

    def load(self, name: str, *, dataset: Any, **options: Any) -> nn.Module:
        torch.manual_seed(1)
        return self.ARCHS[name]().eval()

    def check(self, name: str, *, dataset: Any, **options: Any) -> None:
        if name not in self.ARCHS:
            raise ValueError(f"bench teachers: {', '.join(self.ARCHS)}; got {name!r}")


class AlwaysRobust(nn.Module):
    """The student's computation with a fixed prediction (class 0 by a margin no attack can overturn):
    AutoAttack's worst case, every stage running to its end on every point."""

    def __init__(self, model: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("margin", torch.nn.functional.one_hot(torch.tensor(0), num_classes).float() * 10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e-3 * self.model(x) + self.margin


# -------------------------------------------------------------------------------------------------
# Official-style steps (fp32, trainable parameters during the attack, the official extra forwards)
# -------------------------------------------------------------------------------------------------

def _kl_mean(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # nn.KLDivLoss() default: sum / (B * C)
    return F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="sum") / s.numel()


def _rslad_kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # RSLAD's kl_loss, mean over B * C
    p = F.softmax(t, 1)
    return (-F.log_softmax(s, 1) * p + torch.log(p + 1e-5) * p).mean()


def _project(x_adv: torch.Tensor, g: torch.Tensor, x: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    x_adv = x_adv.detach() + alpha * g.sign()
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0).detach()


class Official:
    """One official-style training step per method; owns its student, optimizer and (CIARD) teacher optimizer."""

    def __init__(self, method: str, student: nn.Module, teachers: dict[str, nn.Module], steps: int) -> None:
        self.method, self.student, self.teachers, self.steps = method, student, teachers, steps
        self.opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        if method == "ciard":  # ITT: the robust teacher is trained with its own SGD (lr 1e-4, momentum 0.1)
            self.t_opt = torch.optim.SGD(teachers["robust"].parameters(), lr=1e-4, momentum=0.1, weight_decay=2e-4)
            self.tau, self.w, self.l0 = (1.0, 1.0), (0.5, 0.5), None  # B-MTARD's state
        self.eps, self.alpha = 8 / 255, 2 / 255

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        getattr(self, self.method)(x, y)

    def _pgd(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, start: str) -> torch.Tensor:
        x_adv = (x + torch.empty_like(x).uniform_(-self.eps, self.eps) if start == "uniform"
                 else x + 0.001 * torch.randn_like(x)).detach()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            (g,) = torch.autograd.grad(loss_fn(x_adv), [x_adv])
            x_adv = _project(x_adv, g, x, self.eps, self.alpha)
        return x_adv

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def pgd_at(self, x: torch.Tensor, y: torch.Tensor) -> None:
        s = self.student
        s.eval()
        x_adv = self._pgd(lambda xa: F.cross_entropy(s(xa), y), x, "uniform")
        s.train()
        self._update(F.cross_entropy(s(x_adv), y))

    def trades(self, x: torch.Tensor, y: torch.Tensor) -> None:  # yaodongyu/TRADES/trades.py
        s = self.student
        s.eval()
        x_adv = self._pgd(lambda xa: F.kl_div(F.log_softmax(s(xa), 1), F.softmax(s(x), 1), reduction="sum"),
                          x, "gaussian")  # S(x) recomputed at every step, as the official code does
        s.train()
        logits = s(x)
        robust = F.kl_div(F.log_softmax(s(x_adv), 1), F.softmax(s(x), 1), reduction="sum") / x.shape[0]
        self._update(F.cross_entropy(logits, y) + 6.0 * robust)

    def rslad(self, x: torch.Tensor, y: torch.Tensor) -> None:  # zibojia/RSLAD
        s, t = self.student, self.teachers["robust"]
        t_nat = t(x)  # teacher frozen (requires_grad False), no no_grad in the official step
        s.eval()
        x_adv = self._pgd(lambda xa: F.kl_div(F.log_softmax(s(xa), 1), F.softmax(t_nat, 1), reduction="sum"),
                          x, "gaussian")
        s.train()
        self.opt.zero_grad()
        adv, nat = s(x_adv), s(x)
        self._update(5 / 6 * _rslad_kl(adv, t_nat.detach()) + 1 / 6 * _rslad_kl(nat, t_nat.detach()))

    def adaad(self, x: torch.Tensor, y: torch.Tensor) -> None:  # boyellow/AdaAD (alpha = 1)
        s, t = self.student, self.teachers["robust"]
        s.eval()
        x_adv = self._pgd(lambda xa: F.kl_div(F.log_softmax(s(xa), 1), F.softmax(t(xa), 1), reduction="sum"),
                          x, "gaussian")
        s.train()
        adv = s(x_adv)
        with torch.no_grad():
            t_adv, t_nat = t(x_adv), t(x)
        nat = s(x)  # the official step's clean forward (its weight is 1 - alpha = 0)
        self._update(1.0 * _kl_mean(adv, t_adv) + 0.0 * _kl_mean(nat, t_nat))

    def ciard(self, x: torch.Tensor, y: torch.Tensor) -> None:  # eminentgu/CIARD (HEAD), ITT active
        s, t_adv, t_nat = self.student, self.teachers["robust"], self.teachers["natural"]
        s.train()
        t_adv.train()  # the official robust teacher stays in train mode
        nat_logits = s(x)
        with torch.no_grad():
            tn_nat = t_nat(x)
            t_adv(x)  # unused, moves BN statistics (official)
        s.eval()
        x_adv = self._pgd(lambda xa: F.cross_entropy(s(xa), y), x, "gaussian")
        s.train()
        adv_logits = s(x_adv)
        ta = t_adv(x_adv)  # with grad: ITT reuses it
        with torch.no_grad():
            tn_adv = t_nat(x_adv)
        kl1 = _rslad_kl(adv_logits, ta.detach() / self.tau[0])
        kl2 = _rslad_kl(nat_logits, tn_nat / self.tau[1])
        mask = tn_adv.argmax(1) != y
        kl3 = _rslad_kl(adv_logits[mask] / 5, tn_adv[mask]) if mask.any() else kl1 * 0
        # B-MTARD's temperatures and weights (computed, unused at HEAD) and the push scale: numbers on the host
        h = (neg_entropy(ta, self.tau[0]).item(), neg_entropy(tn_nat, self.tau[1]).item())
        self.tau = entropy_temperatures(*self.tau, *h, rate=0.001)
        l1, l2, l3 = kl1.item(), kl2.item(), kl3.item()
        self.l0 = self.l0 or (l1, l2)
        self.w = normalised_weights(*self.w, l1 / self.l0[0], l2 / self.l0[1], rate=0.025)
        self._update(kl1 + kl2 - magnitude_scale(l1, l2, l3) * kl3)
        self.t_opt.zero_grad()
        F.cross_entropy(ta, y).backward()
        self.t_opt.step()


# -------------------------------------------------------------------------------------------------
# Hand-written loops of the engine's math (same modules, optimizer and precision as an engine run)
# -------------------------------------------------------------------------------------------------

def hand_epoch(run: Run, epoch: int) -> None:
    """AdaAD or RSLAD as a plain loop: same data path, frozen parameters, autograd.grad, same losses, and the
    run's fast paths (teachers cast and folded, the attack's weights cast and folded, CUDA graph steps)."""
    cfg, data, dev = run.config, run.data, run.device
    s, t = run.student, run.teachers["robust"]
    eps, alpha, steps = cfg.threat.eps, cfg.threat.step_size, cfg.threat.steps
    attack_weights = run.attack_weights() or nullcontext
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)
    s.train()
    for idx in epoch_batches(data.train_x.shape[0], cfg.data.batch_size, seed=cfg.seed, epoch=epoch):
        x = augment(to_float(data.train_x[to_device(idx, dev)], dev), data.crop_padding, data.flip)
        x = x.contiguous(memory_format=run.memory_format)
        if run.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with run.step_autocast():
            with torch.no_grad():
                t_nat = t(x) if cfg.method == "rslad" else None
            with model_mode(s, False), frozen_parameters(s, t), attack_weights():
                x_adv = (x + 0.001 * torch.randn_like(x)).detach()
                for _ in range(steps):
                    x_adv.requires_grad_(True)
                    target = t(x_adv) if t_nat is None else t_nat
                    obj = F.kl_div(F.log_softmax(s(x_adv).float(), 1), F.softmax(target.float(), 1), reduction="sum")
                    (g,) = torch.autograd.grad(obj, x_adv)
                    x_adv = (x + (x_adv.detach() + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
            if t_nat is None:
                with torch.no_grad():
                    t_adv = t(x_adv)
                    s(x)  # the official main.py's clean forward (BN statistics), as the engine's AdaAD does
                loss = _kl_mean(s(x_adv).float(), t_adv.float())
            else:
                adv, nat = s(x_adv).float(), s(x).float()
                loss = 5 / 6 * _rslad_kl(adv, t_nat.float()) + 1 / 6 * _rslad_kl(nat, t_nat.float())
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()


# -------------------------------------------------------------------------------------------------
# Measurement
# -------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        self.cuda = self.device.type == "cuda"
        self.batch = args.batch_size
        self.regs = get_registries()
        if "bench" not in self.regs.teacher_sources:
            self.regs.teacher_sources.register(BenchTeachers(), name="bench")
        self.tmp = Path(tempfile.mkdtemp(prefix="rd-bench-gpu-"))
        self.t0 = time.perf_counter()
        self.results: dict[str, Any] = {"environment": environment(self.device, args), "training": [],
                                        "evaluation": [], "skipped": []}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def engine_run(self, method: str, teacher: str | None, precision: str, compile_: bool | str,
                   fold: bool = False) -> Run:
        a = self.args
        raw: dict[str, Any] = {
            "method": method, "seed": 0, "device": str(self.device), "output_dir": str(self.tmp / "run"),
            "channels_last": self.cuda and not a.no_channels_last,
            "data": {"dataset": "synthetic", "val_size": 8, "batch_size": self.batch, "augment": True,
                     "options": {"n_train": self.batch * a.steps + 8, "n_test": 8, "size": 32, "channels": 3,
                                 "num_classes": 10}},
            "student": a.student, "threat": {"eps": 8 / 255, "step_size": 2 / 255, "steps": a.pgd_steps},
            "optim": {"precision": precision, "compile": compile_, "fold_bn": fold, "log_every": 50},
            "eval": {"attacks": ["clean"], "select": "clean"}}
        if method in METHODS_WITH_TEACHER:
            raw["teachers"] = {"robust": f"bench:{teacher}"}
            if method == "ciard":
                raw["teachers"]["natural"] = f"bench:{teacher}"
                raw["teacher_updater"] = {"key": "ciard_itt", "kwargs": {"start_epoch": 0}}
        run = Run(resolve_config(raw, self.regs), self.regs, get_plugin_manager(), DistContext())
        run.teacher_updater.setup(run)
        return run

    def official(self, method: str, run: Run) -> Callable[[int], None]:
        """An official-style loop on its own student (same initial weights) and eager teacher copies."""
        torch.manual_seed(0)
        student = build_student(self.args.student, {}, run.data.info, self.regs).to(self.device)
        teachers = {r: copy.deepcopy(m).to(memory_format=torch.contiguous_format).requires_grad_(False)
                    for r, m in run.teachers.items()}
        if method == "ciard":
            teachers["robust"].requires_grad_(True)  # ITT trains it
        step = Official(method, student, teachers, self.args.pgd_steps)
        gen = torch.Generator().manual_seed(0)
        batches = [(torch.rand(self.batch, 3, 32, 32, generator=gen).to(self.device),
                    torch.randint(0, 10, (self.batch,), generator=gen).to(self.device)) for _ in range(self.args.steps)]

        def epoch(_: int) -> None:
            for x, y in batches:
                step(x, y)
        return epoch

    def time_variants(self, variants: dict[str, Callable[[int], None]]) -> dict[str, dict[str, Any]]:
        times: dict[str, list[float]] = {k: [] for k in variants}
        peaks: dict[str, int] = {k: 0 for k in variants}
        for r in range(self.args.rounds + 1):  # round 0 warms up (cuDNN autotuning, compilation)
            for name, fn in variants.items():
                self.sync()
                if self.cuda:
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                fn(r)
                self.sync()
                if r:
                    times[name].append(time.perf_counter() - t)
                if self.cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
        out = {}
        for name, ts in times.items():
            ips = self.batch * self.args.steps / statistics.median(ts)
            out[name] = {"images_per_s": round(ips, 2), "s_per_step": round(statistics.median(ts) / self.args.steps, 4),
                         "peak_gib": round(peaks[name] / 2**30, 2) if self.cuda else None,
                         "hours_200_epochs": round(EPOCHS * EPOCH_IMAGES / ips / 3600, 2)}
        return out

    def training_job(self, method: str, teacher: str | None, batch: int) -> None:
        self.batch = batch
        variants: dict[str, Callable[[int], None]] = {}
        runs = {}
        rows = self.args.rows.split(",") if self.args.rows else list(ENGINE_ROWS)
        for name in rows:
            precision, comp, fold = ENGINE_ROWS[name]
            if comp and not (self.args.compile and method in self.args.compile_methods.split(",")):
                continue
            runs[name] = self.engine_run(method, teacher, precision, comp, fold)
        variants["official"] = self.official(method, runs.get("engine fp32") or next(iter(runs.values())))
        for name, run in runs.items():
            variants[name] = lambda r, run=run: _train_epoch(run, r)
            if method in ("adaad", "rslad"):
                variants[name.replace("engine", "hand")] = (lambda r, run=run: hand_epoch(run, r))
        measured = self.time_variants(variants)
        base = measured["official"]["images_per_s"]
        for name, m in measured.items():
            m["speedup_vs_official"] = round(m["images_per_s"] / base, 2)
            hand = measured.get(name.replace("engine", "hand"))
            if name.startswith("engine") and hand:
                m["time_ratio_vs_hand"] = round(hand["images_per_s"] / m["images_per_s"], 3)
        best = max((n for n in measured if n.startswith("engine")), key=lambda n: measured[n]["images_per_s"])
        folded = {n: sum(run.folded_bn.values()) for n, run in runs.items()}
        self.results["training"].append({"method": method, "teacher": teacher, "batch_size": batch,
                                         "variants": measured, "best": best, "teacher_bn_folded": folded})

    def eval_job(self) -> None:
        run = self.engine_run("pgd_at", None, "fp32", False)
        model = run.student.eval()
        gen = torch.Generator().manual_seed(0)
        n_pgd, n_aa = self.args.eval_n, self.args.aa_n
        x = torch.rand(max(n_pgd, n_aa), 3, 32, 32, generator=gen)
        aa = "autoattack_apgd" if self.args.smoke else "autoattack"  # --smoke: the cheap stages, same code path
        attacks = make_eval_attacks(["pgd20", aa], self.regs, ThreatModel(eps=8 / 255), num_classes=10)
        self.results["evaluation"] = rows = []
        for name, n, net, label in (("pgd20", n_pgd, model, "PGD-20, random student"),
                                    (aa, n_aa, model, f"{attacks[aa].label}, random student")):
            with torch.no_grad():  # the student's own predictions: every point is attacked
                y = torch.cat([net(to_device(xb, self.device)).argmax(1).cpu() for xb in x[:n].split(256)])
            rows.append(self.time_eval(label, net, x[:n], y, name, attacks[name], concurrency=1))
            self.save()
            if self.left() < 0:
                return
        self.aa_worst_case(model, aa)

    def aa_worst_case(self, model: nn.Module, name: str) -> None:
        """AutoAttack's worst case (no point ever broken) on K chunks of ``--aa-chunk`` images attacked by K
        worker processes at once, for each K of ``--aa-concurrency`` (``auto``: what evaluation picks here)."""
        chunk, worst = self.args.aa_chunk, AlwaysRobust(model).to(self.device)
        attack = self.regs.eval_attacks.build(name, {"batch_size": chunk}, eps=8 / 255, num_classes=10)
        x = torch.rand(chunk, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        auto = auto_concurrency(worst, x, self.device)
        self.results["environment"]["aa_auto_concurrency"] = auto
        one = None  # the concurrency-1 row (list it first): the time of one chunk, the speed to compare with
        for k in dict.fromkeys(auto if k == "auto" else int(k) for k in self.args.aa_concurrency.split(",")):
            if one is not None and self.left() < one["seconds"]:  # even perfect concurrency would not fit
                self.results["skipped"].append(f"AutoAttack worst case, concurrency {k} (time budget)")
                continue
            xs = torch.rand(k * chunk, 3, 32, 32, generator=torch.Generator().manual_seed(k))
            label = f"{attack.label}, worst case (no point ever broken), chunks of {chunk}"
            row = self.time_eval(label, worst, xs, torch.zeros(k * chunk, dtype=torch.long), name, attack,
                                 concurrency=k)  # AlwaysRobust predicts 0 everywhere
            one = row if k == 1 else one
            if one is not None:
                row["x_concurrency_1"] = round(row["images_per_s"] / one["images_per_s"], 2)
            self.results["evaluation"].append(row)
            self.save()

    def time_eval(self, label: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, attack: Any,
                  concurrency: int) -> dict[str, Any]:
        """One evaluation, timed from the call (worker processes' start included) to the result."""
        self.sync()
        t = time.perf_counter()
        res = evaluate(net, x, y, {name: attack}, batch_size=256, device=self.device, seed=0,
                       concurrency=concurrency)
        self.sync()
        dt = time.perf_counter() - t
        return {"attack": label, "n": len(x), "concurrency": concurrency, "seconds": round(dt, 2),
                "images_per_s": round(len(x) / dt, 2), "robust_accuracy": round(res.accuracy[name], 4),
                "hours_10k_test_images": round(10_000 / (len(x) / dt) / 3600, 2)}

    def plan(self) -> list[tuple[str, Callable[[], None]]]:
        """The jobs in priority order: the targets first (AdaAD and RSLAD with WRN-34-10), then the other
        methods, evaluation, and (``full``) WRN-70-16. ``device``: AdaAD and RSLAD at the batch size and at 4x it
        (128 and 512) first, then the other methods, no evaluation; ``eval``: the evaluation job alone."""
        a = self.args
        t34, t70 = ("wrn10_1", "dm10_1") if a.smoke else ("wrn34_10", "wrn70_16")
        jobs: list[tuple[str, Callable[[], None]]] = []
        methods = a.methods.split(",")
        b = a.batch_size
        if a.plan == "eval":
            return [("evaluation", self.eval_job)]
        big = [4 * b] if a.plan == "device" else []
        for batch in (b, *big):
            for m in ("adaad", "rslad"):  # the targets first
                if m in methods:
                    jobs.append((f"{m} {t34} batch {batch}", lambda m=m, batch=batch: self.training_job(m, t34, batch)))
        for m in ("pgd_at", "trades"):
            if m in methods:
                jobs.append((f"{m} batch {b}", lambda m=m: self.training_job(m, None, b)))
        if "ciard" in methods:
            jobs.append((f"ciard {t34} batch {b}", lambda: self.training_job("ciard", t34, b)))
        if a.eval and a.plan != "device":
            jobs.append(("evaluation", self.eval_job))
        if a.plan == "full":
            for m in ("adaad", "rslad", "ciard"):
                if m in methods:
                    jobs.append((f"{m} {t70} batch {b}", lambda m=m: self.training_job(m, t70, b)))
        return jobs

    def run(self) -> None:
        for name, job in self.plan():
            if self.left() < self.args.min_job_s:
                self.results["skipped"].append(name)
                print(f"[bench_gpu] skipped (time budget): {name}", flush=True)
                continue
            print(f"[bench_gpu] {name} ({self.left():.0f} s left)", flush=True)
            try:
                job()
            except torch.cuda.OutOfMemoryError as exc:
                self.results["skipped"].append(f"{name} (out of memory: {str(exc).splitlines()[0]})")
                torch.cuda.empty_cache()
            self.save()
            if self.cuda:
                torch.cuda.empty_cache()
        self.results["environment"]["total_s"] = round(time.perf_counter() - self.t0, 1)
        self.save()

    def save(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (out / "bench_gpu.md").write_text(markdown(self.results))


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "batch_size": args.batch_size, "steps_per_round": args.steps, "rounds": args.rounds,
           "pgd_steps": args.pgd_steps, "smoke": args.smoke,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    smoke = ", SMOKE: tiny CPU-sized models, not a measurement" if env["smoke"] else ""
    lines = [f"# GPU benchmark ({env.get('gpu', env['device'])}{smoke})",
             "", f"torch {env['torch']}, CUDA {env.get('cuda')}, batch {env['batch_size']} (unless a row says "
             f"another), {env['pgd_steps']} PGD "
             f"steps, median of {env['rounds']} rounds x {env['steps_per_round']} steps; `{env['command']}` "
             f"({env['date']}).", "", "## Training", "",
             "| method | teacher | batch | loop | images/s | x official | engine / hand time | peak GiB "
             "| h / 200 epochs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for job in results["training"]:
        for name, m in job["variants"].items():
            lines.append(f"| {job['method']} | {job['teacher'] or '-'} | {job['batch_size']} | {name} | "
                         f"{m['images_per_s']} | {m['speedup_vs_official']} | {m.get('time_ratio_vs_hand', '')} | "
                         f"{m['peak_gib']} | {m['hours_200_epochs']} |")
    lines += ["", "## Best engine setting per method", "",
              "| method | teacher | batch | best engine loop | images/s | x official | target "
              "| engine / hand time (max) |",
              "|---|---|---|---|---|---|---|---|"]
    for job in results["training"]:
        m = job["variants"][job["best"]]
        target = TARGETS.get(job["method"])
        met = "" if target is None else f">= {target} ({'met' if m['speedup_vs_official'] >= target else 'not met'})"
        ratios = [v["time_ratio_vs_hand"] for v in job["variants"].values() if "time_ratio_vs_hand" in v]
        lines.append(f"| {job['method']} | {job['teacher'] or '-'} | {job['batch_size']} | {job['best']} | "
                     f"{m['images_per_s']} | {m['speedup_vs_official']} | {met} | {max(ratios) if ratios else ''} |")
    lines += ["", "## Evaluation (student, fp32)", "",
              "| attack | n | concurrency | seconds | images/s | x concurrency 1 | robust acc. | h / 10k images |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["evaluation"]:
        lines.append(f"| {r['attack']} | {r['n']} | {r.get('concurrency', 1)} | {r['seconds']} | {r['images_per_s']} | "
                     f"{r.get('x_concurrency_1', '')} | {r['robust_accuracy']} | {r['hours_10k_test_images']} |")
    if "aa_auto_concurrency" in env:
        lines.append(f"\nAutoAttack concurrency `auto` on this machine: {env['aa_auto_concurrency']}.")
    if results["skipped"]:
        lines += ["", "Not measured (time budget or memory): " + "; ".join(results["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU-sized: tiny models, batch 8, 1 step, 1 round")
    p.add_argument("--plan", choices=["core", "full", "device", "eval"], default="core",
                   help="core: every method, then evaluation; full: adds the WRN-70-16 teacher; device: AdaAD and "
                        "RSLAD at --batch-size and 4x it first, then the other methods (no evaluation); eval: the "
                        "evaluation job alone")
    p.add_argument("--methods", default="pgd_at,trades,rslad,adaad,ciard")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting jobs after this many seconds")
    p.add_argument("--min-job-s", type=float, default=30.0, help="do not start a job with less time left")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--student", default="timm:resnet18_cifar")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="the compiled engine rows (+compile, +cudagraphs; auto: on CUDA, off with --smoke)")
    p.add_argument("--compile-methods", default="adaad,rslad",
                   help="methods with compiled engine rows (each row compiles its models: ~1 min on an H100; "
                        "add pgd_at,trades,ciard when the budget allows)")
    p.add_argument("--rows", default="", help=f"engine rows to measure, comma-separated (default: all of "
                                               f"{', '.join(ENGINE_ROWS)})")
    p.add_argument("--no-eval", dest="eval", action="store_false")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--eval-n", type=int, default=1000, help="images for PGD-20")
    p.add_argument("--aa-n", type=int, default=128, help="images for AutoAttack on the random student")
    p.add_argument("--aa-chunk", type=int, default=500,
                   help="AutoAttack's chunk in the worst-case rows (500: RobustBench's); K chunks per row")
    p.add_argument("--aa-concurrency", default="1,4,auto",
                   help="worst-case rows: chunks attacked at once (worker processes), 'auto': evaluation's choice")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results/gpu; "
                                                "--smoke: runs/bench_gpu_smoke)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.steps, args.rounds, args.pgd_steps = 8, 1, 1, 2
        args.student, args.eval_n, args.aa_n, args.aa_chunk, args.aa_concurrency = "timm:convnet_xs", 16, 4, 2, "1,2"
    args.compile = args.compile == "on" or (args.compile == "auto" and not args.smoke)
    args.out = args.out or str(ROOT / ("runs/bench_gpu_smoke" if args.smoke else "benchmarks/results/gpu"))
    bench = Bench(args)
    bench.run()
    print(markdown(bench.results))
    return bench.results


if __name__ == "__main__":
    main()
