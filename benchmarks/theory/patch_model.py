"""The patch-data model of "Toward Understanding Adversarial Distillation: Why Robust Teachers Fail" (ICML 2026,
Sec. 4) as a simulation: adversarial training (AT) and adversarial distillation (AD) of a two-layer cubic student
that cannot see the unlearnable feature, with a good and a bad teacher (Theorems 4.7 and 4.8).

Model (the paper's definitions as its summary gives them; ``CHOSEN`` marks what it leaves open and we chose):

* Data ``X = (x_1, ..., x_P)``, ``x_p`` in R^d, label ``y`` in {-1, +1}. Two orthogonal robust features,
  ``u = e_1`` (learnable) and ``v = e_d`` (unlearnable). A sample of S_L has the signal patch ``alpha y u``, a sample
  of S_U the signal patch ``alpha y v``; the other P - 1 patches are noise ``N(0, sigma_n^2 (I_d - Pi_F))``
  with ``F = span{u, v}``. A training sample is in S_U with probability ``p_un``; CHOSEN: the training set holds
  exactly ``round(p_un N)`` S_U samples, the signal is always patch 0 (a patch-sum network is blind to its position).
* Student: CHOSEN two output heads as in the feature-learning literature (Cao et al. 2022), since a ReLU-cubed
  unit is non-negative: ``f_W(X) = F_{+1}(X) - F_{-1}(X)``, ``F_j(X) = (1/m) sum_r sum_p phi(<w_{j,r}, x_p>)``,
  ``phi(z) = max(0, z)^3``, with the constraint ``<w_{j,r}, v> = 0`` (projected gradient descent: the v
  coordinate is zero at initialisation ``N(0, sigma_0^2 I)`` and after every step).
* AT: ``L_AT = l(y f_W(X~))``; AD: ``L_AD = s(y f_T(X)) l(y f_W(X~)) + s(-y f_T(X)) l(-y f_W(X~))``, ``l`` the
  logistic loss, ``s`` the sigmoid; full-batch gradient descent ``W <- W - (eta / N) sum grad L``.
  CHOSEN: ``X~`` is the student's worst case for the true label (``max l(y f_W(X + delta))``, PGD, ``||delta_p||_2 <=
  eps`` on every patch, 5 steps of ``2.5 eps / 5`` from ``delta = 0`` and from a random point, each patch keeping
  its best) for AT and AD alike, so that AT and AD differ only in their outer target; eps grows linearly from 0
  over the first ``eps_warmup`` steps (with the full radius at once, the adversary of a random network in high
  dimension cancels every signal patch and nothing is learned; both theorems start from "u is learned first").
* Teachers, margins exactly as defined: on S_L both have ``y f_T(X) = Gamma``; the good teacher is orthogonal to v
  (``y f_G(X) = 0`` on S_U), the bad one is as confident on S_U (``y f_B(X) = Gamma``). CHOSEN: they are networks of
  the student's form with fixed neurons ``+-c u`` (good) and ``+-c u, +-c v`` (bad), c set so that the margins are
  exactly Gamma (checked at start-up).

Measured over training (``--log-every`` steps), on the training set and on fresh test samples:

* noise response on S_U (resp. S_L): ``max_{i, p, r} <w_{y_i, r}, xi_{i,p}>`` over the training samples of that set
  (how much the true-label head has memorised a sample's noise; the theorems' quantity that stays at its
  initial ``O~(sigma_0 sigma_n sqrt d)`` or grows to ``Omega~(1)``);
* signal learning ``min_j max_r <w_{j,r}, j u>``;
* clean and robust test error (PGD, 20 steps, same eps) on fresh S_L-type test samples (S_U-type test samples are
  at chance for this student by construction: their error is reported separately).

Run ``python benchmarks/theory/patch_model.py`` (a few minutes on one CPU core); results go to
``benchmarks/results/theory/``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_distill.files.atomic import atomic_write_json, atomic_write_text

DTYPE = torch.float32


@dataclass(frozen=True)
class Setting:
    d: int = 1000             # dimension of a patch
    patches: int = 4          # P: one signal patch, P - 1 noise patches
    n_train: int = 200        # N
    n_unlearnable: int = 6    # round(p_un N): S_U samples in the training set
    m: int = 10               # neurons per output head
    sigma_0: float = 0.02     # initialisation scale
    sigma_n: float = 1000 ** -0.5  # noise scale: a noise patch has norm ~ sigma_n sqrt(d) = 1
    alpha: float = 1.0        # signal strength
    eps: float = 0.2          # l2 radius of the perturbation of each patch
    attack_steps: int = 5     # PGD steps of the inner maximisation (training) ...
    attack_restarts: int = 2  # ... from delta = 0 and from a random point (each patch keeps its best)
    eval_attack_steps: int = 20
    eval_restarts: int = 5
    eval_radii: tuple[float, ...] = (1.0, 1.5)  # robust test error at these multiples of eps
    eps_warmup: int = 500     # eps grows linearly from 0 over these first steps (0: full eps from the start)
    eta: float = 50.0         # learning rate
    steps: int = 3000         # T
    gamma: float = 5.0        # teachers' margin Gamma
    n_test: int = 500         # S_L-type test samples (plus as many S_U-type ones as p_un gives)
    log_every: int = 250


# -------------------------------------------------------------------------------------------------
# Data, networks, teachers
# -------------------------------------------------------------------------------------------------


@dataclass
class Data:
    x: Tensor             # (n, P, d)
    y: Tensor             # (n,) in {-1, +1}
    unlearnable: Tensor   # (n,) bool: signal along v
    noise: Tensor         # (n, P - 1, d): the noise patches


def make_data(s: Setting, n: int, n_unlearnable: int, gen: torch.Generator) -> Data:
    d, P = s.d, s.patches
    y = torch.randint(0, 2, (n,), generator=gen, dtype=DTYPE) * 2 - 1
    unlearnable = torch.zeros(n, dtype=torch.bool)
    unlearnable[torch.randperm(n, generator=gen)[:n_unlearnable]] = True
    noise = torch.randn(n, P - 1, d, generator=gen, dtype=DTYPE) * s.sigma_n
    noise[..., 0] = 0.0       # N(0, sigma_n^2 (I - Pi_F)): no component along u = e_1 ...
    noise[..., d - 1] = 0.0   # ... nor along v = e_d
    signal = torch.zeros(n, d, dtype=DTYPE)
    signal[~unlearnable, 0] = s.alpha * y[~unlearnable]
    signal[unlearnable, d - 1] = s.alpha * y[unlearnable]
    return Data(torch.cat([signal[:, None], noise], 1), y, unlearnable, noise)


def preactivations(w: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``z[n, p, j m + r] = <w_{j,r}, x_p>`` (n, P, 2m) and the Gram matrix ``G = W W^T`` (2m, 2m); w: (2, m, d)."""
    flat = w.reshape(-1, w.shape[-1])
    return x @ flat.T, flat @ flat.T


def heads(z: Tensor, m: int) -> Tensor:
    """f_W = F_{+1} - F_{-1} from the pre-activations: F_j = (1/m) sum_r sum_p relu(z[., p, j m + r])^3."""
    out = (F.relu(z) ** 3).view(z.shape[0], z.shape[1], 2, m).sum((1, 3)) / m
    return out[:, 0] - out[:, 1]


def network(w: Tensor, x: Tensor) -> Tensor:
    """f_W(X) = F_{+1}(X) - F_{-1}(X); w: (2, m, d), x: (n, P, d)."""
    return heads(preactivations(w, x)[0], w.shape[1])


def init_student(s: Setting, gen: torch.Generator) -> Tensor:
    w = torch.randn(2, s.m, s.d, generator=gen, dtype=DTYPE) * s.sigma_0
    w[..., s.d - 1] = 0.0  # <w_{j,r}, v> = 0
    return w


def make_teacher(s: Setting, kind: str) -> Tensor:
    """A fixed network of the student's form: neurons +-c u (good), +-c u and +-c v (bad); margins exactly Gamma."""
    dirs = [0] if kind == "good" else [0, s.d - 1]
    c = (len(dirs) * s.gamma) ** (1 / 3) / s.alpha  # (1/m_T) (c alpha)^3 = Gamma
    w = torch.zeros(2, len(dirs), s.d, dtype=DTYPE)
    for k, coord in enumerate(dirs):
        w[0, k, coord], w[1, k, coord] = c, -c
    return w


# -------------------------------------------------------------------------------------------------
# Attack, losses, metrics
# -------------------------------------------------------------------------------------------------


def patch_margins(z: Tensor, y: Tensor, m: int) -> Tensor:
    """y times each patch's contribution to f_W: (n, P); their sum over patches is y f_W(X)."""
    sign = torch.cat([torch.ones(m), -torch.ones(m)]).to(z)  # head +1 adds, head -1 subtracts
    return y[:, None] * (F.relu(z) ** 3 * sign).sum(-1) / m


def attack(z: Tensor, gram: Tensor, y: Tensor, m: int, eps: float | Tensor, steps: int, restarts: int = 1,
           gen: torch.Generator | None = None) -> Tensor:
    """The worst case of l(y f_W(X + delta)) over ||delta_p||_2 <= eps on every patch, by PGD (normalised gradient
    steps of 2.5 eps / steps). Takes :func:`preactivations` (detached); returns ``beta`` (n, P, 2m), ``delta_p =
    beta_p W``.

    * Exact and cheap: the gradient of f with respect to a patch lies in the span of the 2m neurons, so every PGD
      iterate does too; ``<W, delta_p> = beta_p G`` and ``||delta_p||^2 = beta_p G beta_p^T``, so the attack runs
      on (n, P, 2m) tensors instead of (n, P, d) (``tests/test_theory_sim.py`` checks it against input space).
    * The constraint is per patch and f is a sum over patches, so the worst case is each patch's own worst case:
      every patch minimises its margin contribution, and of the ``restarts`` (the first from delta = 0, the
      others from a random point of the ball in span(W)) each patch keeps its best. The random starts matter: a
      ReLU-cubed unit has no gradient while its pre-activation is negative, so PGD from 0 never finds the
      neurons of the wrong head that a perturbation could switch on.
    """
    if not isinstance(eps, Tensor):
        if eps <= 0:
            return torch.zeros_like(z)
        eps = torch.tensor(eps, dtype=z.dtype)
    eps = eps.reshape(-1, 1, 1).clamp_min(1e-12)  # one radius, or one per sample
    step = 2.5 * eps / steps
    sign = torch.cat([torch.ones(m), -torch.ones(m)]).to(z)

    def norm(b: Tensor) -> Tensor:
        return ((b @ gram) * b).sum(-1, keepdim=True).clamp_min(0).sqrt()

    best, best_margin = None, None
    for restart in range(restarts):
        beta = torch.zeros_like(z)
        if restart:
            beta = torch.randn(z.shape, generator=gen, dtype=z.dtype)
            radius = eps * torch.rand(z.shape[:2] + (1,), generator=gen, dtype=z.dtype)
            beta = beta * radius / norm(beta).clamp_min(1e-30)
        for _ in range(steps):
            zt = z + beta @ gram
            grad = y[:, None, None] * sign * 3 * F.relu(zt) ** 2 / m  # d(patch margin)/dz~: its delta-gradient on W
            beta = beta - step * grad / norm(grad).clamp_min(1e-30)
            beta = beta * (eps / norm(beta).clamp_min(eps))
        margin = patch_margins(z + beta @ gram, y, m)
        if best is None:
            best, best_margin = beta, margin
        else:
            better = margin < best_margin
            best = torch.where(better[..., None], beta, best)
            best_margin = torch.where(better, margin, best_margin)
    return best


def adversarial_margin(z: Tensor, gram: Tensor, y: Tensor, m: int, beta: Tensor) -> Tensor:
    """y f_W(X + delta) with delta_p = beta_p W (differentiable through z and G)."""
    return y * heads(z + beta @ gram, m)


def outer_loss(margin: Tensor, target: Tensor | None) -> Tensor:
    """AT: mean l(y f(X~)); AD: mean of s(y f_T) l(y f(X~)) + s(-y f_T) l(-y f(X~)), target = s(y f_T(X))."""
    if target is None:
        return F.softplus(-margin).mean()
    return (target * F.softplus(-margin) + (1 - target) * F.softplus(margin)).mean()


def noise_response(z: Tensor, data: Data, mask: Tensor, m: int) -> float:
    """max over the samples in ``mask``, their noise patches and neurons of <w_{y_i, r}, xi_{i,p}>."""
    if not mask.any():
        return float("nan")
    head = (data.y[mask] < 0).long()  # y = +1 -> head 0, y = -1 -> head 1
    noise = z[mask, 1:].view(int(mask.sum()), z.shape[1] - 1, 2, m)  # patches 1.. are the noise patches
    return noise[torch.arange(head.numel()), :, head].amax().item()


def robust_radius(z: Tensor, gram: Tensor, y: Tensor, s: Setting, high: float, iters: int = 10) -> Tensor:
    """Per sample, the smallest per-patch l2 radius at which the evaluation attack flips the prediction, by
    bisection on [0, ``high``] (0 for a sample misclassified clean, ``high`` if that radius does not flip it)."""
    def flips(eps: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(0)
        beta = attack(z, gram, y, s.m, eps, s.eval_attack_steps, s.eval_restarts, gen)
        return adversarial_margin(z, gram, y, s.m, beta) <= 0

    lo, hi = torch.zeros(z.shape[0], dtype=z.dtype), torch.full((z.shape[0],), high, dtype=z.dtype)
    for _ in range(iters):
        mid = (lo + hi) / 2
        flipped = flips(mid)
        hi, lo = torch.where(flipped, mid, hi), torch.where(flipped, lo, mid)
    return torch.where(y * heads(z, s.m) <= 0, torch.zeros_like(hi), hi)


def errors(w: Tensor, data: Data, s: Setting) -> dict[str, float]:
    """Clean and robust test errors (``eval_attack_steps`` x ``eval_restarts``, at each of ``eval_radii`` x eps) and
    the mean robust radius (:func:`robust_radius`), on the S_L-type and the S_U-type test samples."""
    z, gram = preactivations(w, data.x)
    wrong = {"clean": data.y * heads(z, s.m) <= 0}
    for r in s.eval_radii:
        beta = attack(z, gram, data.y, s.m, r * s.eps, s.eval_attack_steps, s.eval_restarts,
                      torch.Generator().manual_seed(0))
        wrong[f"robust{r:g}"] = (adversarial_margin(z, gram, data.y, s.m, beta) <= 0) | wrong["clean"]
    radius = robust_radius(z, gram, data.y, s, high=s.alpha)
    out = {}
    for kind, mask in (("sl", ~data.unlearnable), ("su", data.unlearnable)):
        for name, bad in wrong.items():
            out[f"{name}_err_{kind}"] = bad[mask].to(DTYPE).mean().item() if mask.any() else float("nan")
        out[f"radius_{kind}"] = radius[mask].mean().item() if mask.any() else float("nan")
    return out


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


def train(s: Setting, method: str, seed: int) -> list[dict[str, Any]]:
    """``method`` in {"at", "ad_good", "ad_bad"}; returns one row per logged step.

    The seed fixes the initialisation first, then the data: settings that differ only in their method or teacher
    start from the same network on the same data.
    """
    gen = torch.Generator().manual_seed(seed)
    w = init_student(s, gen)
    train_data = make_data(s, s.n_train, s.n_unlearnable, gen)
    n_test_un = round(s.n_test * s.n_unlearnable / max(s.n_train - s.n_unlearnable, 1))
    test_data = make_data(s, s.n_test + n_test_un, n_test_un, gen)
    x, y = train_data.x, train_data.y
    target = None
    if method != "at":
        teacher = make_teacher(s, method.removeprefix("ad_"))
        margin = y * network(teacher, x)
        expected = torch.where(train_data.unlearnable, 0.0 if method == "ad_good" else s.gamma, s.gamma)
        assert torch.allclose(margin, expected.to(DTYPE), rtol=1e-5, atol=1e-5), "teacher margins differ from Gamma/0"
        target = torch.sigmoid(margin)
    rows = []
    for t in range(s.steps + 1):
        eps = s.eps * min(1.0, t / s.eps_warmup) if s.eps_warmup else s.eps
        w.requires_grad_(True)
        z, gram = preactivations(w, x)
        beta = attack(z.detach(), gram.detach(), y, s.m, eps, s.attack_steps, s.attack_restarts, gen)
        loss = outer_loss(adversarial_margin(z, gram, y, s.m, beta), target)
        if t % s.log_every == 0 or t == s.steps:
            with torch.no_grad():
                zd = z.detach()
                rows.append({"step": t, "eps": eps, "train_loss": loss.item(),
                             "signal": min(w[0, :, 0].max().item(), (-w[1, :, 0]).max().item()),
                             "noise_su": noise_response(zd, train_data, train_data.unlearnable, s.m),
                             "noise_sl": noise_response(zd, train_data, ~train_data.unlearnable, s.m),
                             **errors(w.detach(), test_data, s)})
            if t == s.steps:
                break
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method}, seed {seed}: the loss is {loss.item()} at step {t}; lower eta "
                                     "or sigma_0, or lengthen eps_warmup.")
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w = w - s.eta * grad  # the loss is the mean over N: (eta / N) sum grad
            w[..., s.d - 1] = 0.0  # keep <w, v> = 0
    return rows


# -------------------------------------------------------------------------------------------------
# Experiment: the four settings of the theorems over seeds, and a sweep over |S_U|
# -------------------------------------------------------------------------------------------------

SETTINGS = {  # name: (method, number of S_U samples, or None for the setting's)
    "AT, p_un = 0": ("at", 0),
    "AT, p_un > 0": ("at", None),
    "AD, good teacher": ("ad_good", None),
    "AD, bad teacher": ("ad_bad", None),
}
SWEEP_METHODS = {"at": "AT", "ad_good": "AD, good teacher", "ad_bad": "AD, bad teacher"}
def columns(s: Setting) -> list[tuple[str, str, str]]:
    """The tables' columns, (metric, header, format): a robust test error per radius of ``eval_radii``."""
    radii = [(f"robust{r:g}_err_sl", f"robust test error at {'' if r == 1 else f'{r:g} '}eps, S_L-type (%)", "pct")
             for r in s.eval_radii]
    return [("noise_su", "noise response on S_U", "{:.3f}"), ("noise_sl", "noise response on S_L", "{:.3f}"),
            ("signal", "signal <w, u>", "{:.2f}"), ("clean_err_sl", "clean test error, S_L-type (%)", "pct"),
            *radii, ("radius_sl", "mean robust radius, S_L-type", "{:.3f}"),
            (f"robust{s.eval_radii[0]:g}_err_su",
             f"robust test error{'' if s.eval_radii[0] == 1 else f' at {s.eval_radii[0]:g} eps'}, S_U-type (%)", "pct")]


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    return mean, (sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5


def _fmt(stat: tuple[float, float], fmt: str) -> str:
    mean, std = stat
    if math.isnan(mean):
        return "-"
    if fmt == "pct":
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _plots(history: list[dict[str, Any]], sweep_rows: list[dict[str, Any]], s: Setting, out: Path) -> list[Path]:
    from robust_distill.results.plots import _plt, _save

    plt = _plt()
    paths = []
    panels = [("noise_su", "noise response on S_U", True), ("noise_sl", "noise response on S_L", True),
              ("radius_sl", "mean robust radius (S_L-type test)", False),
              (f"robust{max(s.eval_radii):g}_err_sl", f"robust test error at {max(s.eval_radii):g} eps (S_L-type, %)",
               False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.4))
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for i, name in enumerate(SETTINGS):
            rows = [r for r in history if r["setting"] == name]
            steps = sorted({r["step"] for r in rows})
            vals = [[r[key] * (100 if key.endswith("_err_sl") else 1) for r in rows if r["step"] == t] for t in steps]
            if all(math.isnan(v) for vs in vals for v in vs):
                continue
            mean = [sum(v) / len(v) for v in vals]
            ax.plot(steps, mean, color=f"C{i}", label=name)
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=f"C{i}", alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient step")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Patch model: mean over {len({r['seed'] for r in history})} seeds (band: min-max); "
                 f"|S_U| = {s.n_unlearnable} of N = {s.n_train}", fontsize=10)
    paths.append(_save(fig, out / "training.png"))
    if sweep_rows:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        counts = sorted({r["n_unlearnable"] for r in sweep_rows})
        for ax, (key, title, log) in zip(axes, [panels[0], panels[2]], strict=True):
            for i, (method, label) in enumerate(SWEEP_METHODS.items()):
                pts = [(c, _mean_std([r[key] for r in sweep_rows if r["method"] == method and r["n_unlearnable"] == c]))
                       for c in counts]
                pts = [(c, m, sd) for c, (m, sd) in pts if not math.isnan(m)]
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=f"C{i + 1}",
                            marker="o", capsize=3, label=label)
            ax.set_title(f"{title}, after {s.steps} steps", fontsize=10)
            ax.set_xlabel("|S_U| (training samples with the unlearnable feature)")
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        paths.append(_save(fig, out / "sweep.png"))
    return paths


def _markdown(summary: dict[str, Any], s: Setting) -> str:
    cols = columns(s)
    lines = ["# Patch model of \"Why robust teachers fail\" (Theorems 4.7-4.8): results", "",
             f"Generated by `python benchmarks/theory/patch_model.py`: {summary['cpu_minutes']} CPU minutes on one "
             f"thread ({summary['minutes']} min of wall time on a shared machine).", "",
             f"Settings: `{json.dumps(summary['setting'])}`.", "",
             f"## After {s.steps} steps (mean ± std over seeds {summary['seeds']})", "",
             "| setting | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    init = summary["initial"]
    for name, stats in summary["final"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(stats[k], f) for k, _, f in cols) + " |")
    lines += ["", f"At initialisation the noise response is {_fmt(init['noise_su'], '{:.3f}')} on S_U and "
              f"{_fmt(init['noise_sl'], '{:.3f}')} on S_L (same initialisations for every setting)."]
    if summary["sweep"]:
        lines += ["", f"## Sweep over |S_U| (after {s.steps} steps; seeds {summary['sweep_seeds']}, and "
                  f"{summary['seeds']} at |S_U| = 0 and {s.n_unlearnable}, the settings above)", "",
                  "| method | |S_U| | " + " | ".join(h for _, h, _ in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for key, stats in summary["sweep"].items():
            method, n_un = key.split("|")
            lines.append(f"| {SWEEP_METHODS[method]} | {n_un} | " + " | ".join(_fmt(stats[k], f) for k, _, f in cols)
                         + " |")
    return "\n".join(lines) + "\n"


def run(s: Setting, seeds: list[int], sweep: list[int], sweep_seeds: list[int], out: Path) -> dict[str, Any]:
    history: list[dict[str, Any]] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    for name, (method, n_un) in SETTINGS.items():
        setting = dataclasses.replace(s, n_unlearnable=s.n_unlearnable if n_un is None else n_un)
        for seed in seeds:
            for row in train(setting, method, seed):
                history.append({"setting": name, "method": method, "n_unlearnable": setting.n_unlearnable,
                                "seed": seed, **row})
            last = history[-1]
            print(f"{name:<18} seed {seed}: noise response S_U {last['noise_su']:.3f}, S_L {last['noise_sl']:.3f}; "
                  f"robust radius {last['radius_sl']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    sweep_rows: list[dict[str, Any]] = []
    for n_un in sweep:
        setting = dataclasses.replace(s, n_unlearnable=n_un, log_every=s.steps)
        for method in SWEEP_METHODS:
            for seed in sweep_seeds:
                final = train(setting, method, seed)[-1]
                sweep_rows.append({"method": method, "n_unlearnable": n_un, "seed": seed, **final})
        print(f"sweep |S_U| = {n_un} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for name, (method, n_un) in SETTINGS.items():  # the main settings are points of the sweep too
        n_un = s.n_unlearnable if n_un is None else n_un
        if sweep and not (method != "at" and n_un == 0):
            sweep_rows += [{"method": method, "n_unlearnable": n_un, "seed": r["seed"],
                            **{k: v for k, v in r.items() if k not in ("setting", "method", "n_unlearnable", "seed")}}
                           for r in history if r["setting"] == name and r["step"] == s.steps]
    sweep = sorted({r["n_unlearnable"] for r in sweep_rows})
    metrics = [k for k, _, _ in columns(s)] + ["train_loss"]
    summary: dict[str, Any] = {"setting": dataclasses.asdict(s), "seeds": seeds, "sweep_seeds": sweep_seeds,
                               "minutes": round((time.perf_counter() - t0) / 60, 1),
                               "cpu_minutes": round((time.process_time() - cpu0) / 60, 1), "final": {}, "sweep": {}}
    firsts = [r for r in history if r["step"] == 0 and r["setting"] == "AT, p_un > 0"]
    summary["initial"] = {k: _mean_std([r[k] for r in firsts]) for k in ("noise_su", "noise_sl")}
    for name in SETTINGS:
        finals = [r for r in history if r["setting"] == name and r["step"] == s.steps]
        summary["final"][name] = {k: _mean_std([r[k] for r in finals]) for k in metrics}
    for n_un in sweep:
        for method in SWEEP_METHODS:
            rows = [r for r in sweep_rows if r["method"] == method and r["n_unlearnable"] == n_un]
            if rows:
                summary["sweep"][f"{method}|{n_un}"] = {k: _mean_std([r[k] for r in rows]) for k in metrics}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_csv(history), out / "history.csv")
    if sweep_rows:
        atomic_write_text(_csv(sweep_rows), out / "sweep.csv")
    atomic_write_json(summary, out / "summary.json")
    atomic_write_text(_markdown(summary, s), out / "results.md")
    _plots(history, sweep_rows, s, out)
    return {"summary": summary, "history": history, "sweep": sweep_rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "theory"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sweep", default="2", help="more numbers of S_U samples (the main settings' 0 and "
                   "n_unlearnable are points of the sweep too; '' for no sweep)")
    p.add_argument("--sweep-seeds", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Setting field, e.g. --set steps=1000")
    ns = p.parse_args(argv)
    s = Setting()
    for item in ns.set:
        key, _, value = item.partition("=")
        if key not in Setting.__dataclass_fields__:
            p.error(f"--set {item}: no setting {key!r}; settings: {', '.join(Setting.__dataclass_fields__)}")
        current = getattr(s, key)
        parsed: Any = tuple(float(v) for v in value.split(",")) if isinstance(current, tuple) else type(current)(value)
        s = dataclasses.replace(s, **{key: parsed})
    torch.set_num_threads(1)
    sweep = [int(v) for v in ns.sweep.split(",") if v.strip()]
    result = run(s, list(range(ns.seeds)), sweep, list(range(ns.sweep_seeds)), Path(ns.out))
    print(_markdown(result["summary"], s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
