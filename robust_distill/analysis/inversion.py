"""Representation inversion on the robustly unlearnable set ("Why Robust Teachers Fail", ICML 2026, Sec. 3).

The paper reports that inverting a robust model's features on the robustly unlearnable samples S_U gives
collapsed pseudo-features, while the learnable samples S_L invert to recognisable images. Here:

* :func:`classifier_layer` / :func:`representation`: the representation R(x) of a model, the input of its final
  classifier layer (the penultimate features), read by a forward pre-hook on the module timm's
  ``get_classifier()`` returns, else on the last ``nn.Linear``.
* :func:`invert`: representation inversion (Engstrom et al. 2019, "Adversarial robustness as a prior for learned
  representations", Sec. 3; the objective of Ilyas et al. 2019's robust-dataset construction, App. C):
  ``x_inv = argmin_{x' in [0,1]^d} ||R(x') - R(x)||_2`` from a start ``x0`` by normalised-gradient (L2) descent.
* :func:`inversion_metrics`, :func:`inversion_study`, :func:`compare_groups`: per-sample relative representation
  error, pixel Pearson correlation (the headline similarity) and L2 distance of ``x_inv`` to ``x``, whether the
  model classifies ``x_inv`` as ``x``'s label; means with bootstrap intervals over n samples of S_U and of S_L,
  and the verdict "S_U inverts worse than S_L".
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robust_distill.analysis.unlearnable import set_images
from robust_distill.core.manager import Registries
from robust_distill.data.memory import to_float
from robust_distill.errors import ConfigError, InputError
from robust_distill.files.atomic import atomic_write, read_json

__all__ = ["STARTS", "classifier_layer", "representation", "start_images", "descend", "invert", "inversion_metrics",
           "compare_groups", "inversion_study", "InversionStudy", "format_study", "plot_inversions"]

#: the starts ``x0`` of :func:`invert`: uniform noise, another image of the batch, the batch's mean image
STARTS = ("noise", "other", "mean")
#: the headline similarity of an inverted image to its original (scale- and offset-free, as perceived)
HEADLINE = "pearson"


# -------------------------------------------------------------------------------------------------
# The representation R(x)
# -------------------------------------------------------------------------------------------------


def classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the final classifier layer, whose input is the representation R(x).

    The first module (outermost first, so a wrapper such as ``Normalized`` is looked through) with a timm
    ``get_classifier()`` returning a real layer gives it; otherwise the last ``nn.Linear`` registered (the
    project's ``ConvNet``: ``classifier``).
    """
    names = {id(m): n for n, m in model.named_modules()}
    for module in model.modules():
        get = getattr(module, "get_classifier", None)
        if not callable(get):
            continue
        try:
            head = get()
        except Exception:  # a custom get_classifier of another signature: fall back to the last Linear
            head = None
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity) and id(head) in names:
            return names[id(head)], head
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"model {type(model).__name__} has no classifier layer to take the representation from: "
                         "no timm get_classifier() returning a layer and no nn.Linear. Representation inversion "
                         "needs a network ending in a linear classifier (the penultimate features are its input).")
    return linears[-1]


@contextmanager
def _captured(layer: nn.Module) -> Iterator[dict[str, Tensor]]:
    """The input of ``layer`` at each forward, in ``store["r"]`` (a forward pre-hook, removed on exit)."""
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        store["r"] = args[0]

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def representation(model: nn.Module, x: Tensor, layer: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """``(R(x), logits)``: the input of the classifier layer, flattened per sample, and the model's output.

    Differentiable in ``x``; the model's mode is the caller's (:func:`invert` uses eval mode).
    """
    layer = layer if layer is not None else classifier_layer(model)[1]
    with _captured(layer) as store:
        logits = model(x)
    if "r" not in store:
        raise InputError(f"the classifier layer {type(layer).__name__} was not called in the model's forward: "
                         "cannot read the representation R(x).")
    return store["r"].flatten(1), logits


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then each module's own mode again (the model is left as it was given)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


# -------------------------------------------------------------------------------------------------
# Inversion
# -------------------------------------------------------------------------------------------------


def start_images(x: Tensor, start: str | Tensor, seed: int, allowed: Sequence[str] = STARTS,
                 context: str = "inversion arguments") -> Tensor:
    """Where a descent over images starts: ``"noise"`` (uniform in [0,1]^d), ``"other"`` (another image of ``x``: a
    random derangement, so at least two images), ``"mean"`` (the mean image of ``x``) -- those of ``allowed`` --
    or a tensor of ``x``'s shape. Deterministic from ``seed``."""
    if isinstance(start, Tensor):
        if start.shape != x.shape:
            raise ConfigError([f"start: a tensor of shape {tuple(x.shape)} (the images'), got {tuple(start.shape)}"],
                              context)
        return to_float(start, x.device).clamp(0, 1)
    if start not in allowed:
        raise ConfigError([f"start: {start!r} is not one of {', '.join(allowed)} (or an image tensor)"], context)
    g = torch.Generator().manual_seed(seed)
    if start == "noise":
        return torch.rand(x.shape, generator=g).to(x.device)
    if start == "other":  # a random cycle through the batch: every image starts from another one
        if x.shape[0] < 2:
            raise ConfigError(["start: 'other' needs at least two images"], context)
        perm = torch.randperm(x.shape[0], generator=g)
        source = torch.empty_like(perm)
        source[perm] = perm.roll(-1)
        return x[source.to(x.device)].clone()
    return x.mean(0, keepdim=True).expand_as(x).clone()


def descend(objective: Callable[[Tensor], Tensor], x0: Tensor, *, steps: int, step_size: float, anneal: bool = True,
            use_best: bool = True, trace: list[Tensor] | None = None,
            measure: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalised-gradient (L2) descent of a per-sample ``objective`` over images in [0, 1]:
    ``x <- clip_[0,1](x - a_t g / ||g||_2)``, ``g`` each sample's gradient, ``steps`` times from ``x0``; ``a_t`` is
    ``step_size``, decayed linearly to ``step_size / steps`` when ``anneal``. Returns each sample's iterate of
    lowest objective (``use_best``) or the last one. ``trace``, when given, receives ``measure(objective)`` (default:
    the objective) per sample, before each step and after the last. The one optimiser of :func:`invert` and of the
    robust-feature images (:mod:`robust_distill.analysis.robust_features`)."""
    cur = x0.clone()
    best, best_value = cur.clone(), torch.full((x0.shape[0],), math.inf, device=x0.device)
    view = (-1,) + (1,) * (x0.dim() - 1)
    for t in range(steps + 1):
        cur.requires_grad_(True)
        value = objective(cur)
        v = value.detach()
        if trace is not None:
            trace.append((measure(v) if measure else v).cpu())
        better = v < best_value
        best[better], best_value[better] = cur.detach()[better], v[better]
        if t == steps:
            break
        (g,) = torch.autograd.grad(value.sum(), cur)
        a = step_size * (1 - t / steps) if anneal else step_size
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        cur = (cur.detach() - a * g / norm).clamp_(0, 1)
    return (best if use_best else cur).detach()


def invert(model: nn.Module, x: Tensor, *, steps: int = 500, step_size: float = 3.0, start: str | Tensor = "noise",
           seed: int = 0, anneal: bool = True, batch_size: int = 128, use_best: bool = True,
           history: list[float] | None = None) -> Tensor:
    """Representation inversion (Engstrom et al. 2019, Sec. 3, Eq. 3): ``argmin_{x' in [0,1]^d} ||R(x') - R(x)||_2``.

    Normalised-gradient (L2) descent from ``x0`` (``start``: ``"noise"`` uniform in [0,1]^d, ``"other"`` another
    image of ``x``, ``"mean"`` the mean image of ``x``, or a tensor): ``x' <- clip_[0,1](x' - a_t g / ||g||_2)``
    with ``g`` the gradient of ``||R(x') - R(x)||^2`` per sample, ``steps`` times. ``a_t`` is ``step_size``
    (an L2 length in pixel units, [0,1]-scaled) decayed linearly to ``step_size / steps`` when ``anneal``
    (Engstrom's code keeps it constant, ``anneal=False``, over 10,000 steps; a decay reaches a lower error in the
    few hundred steps a CPU affords). The defaults, 500 steps from a first step of 3 (a uniform-noise start lies
    about 14 from a 28x28 image in L2), take about 35 s for 64 Fashion-MNIST images through the 288k-parameter
    ``convnet_m`` on one CPU core. ``use_best`` returns each sample's iterate with the lowest error, as the
    ``robustness`` library's attacker does. Deterministic from ``seed``; the model runs in eval mode and is left
    unchanged (no parameter, gradient or mode altered). ``history``, when given, receives the mean relative
    error ``||R(x') - R(x)|| / ||R(x)||`` before each step and after the last.

    :param x: images in [0, 1] (float) or uint8, on the model's device.
    :return: the inverted images, float in [0, 1], the shape of ``x``.
    """
    if steps < 0 or step_size <= 0 or batch_size < 1:
        raise ConfigError([f"steps >= 0, step_size > 0 and batch_size >= 1, got {steps}, {step_size}, {batch_size}"],
                          "inversion arguments")
    layer = classifier_layer(model)[1]
    x = to_float(x, _device(model))
    x0 = start_images(x, start, seed)
    out, errors = [], []
    with _eval_mode(model):
        for lo in range(0, x.shape[0], batch_size):
            xb, x0b = x[lo:lo + batch_size], x0[lo:lo + batch_size]
            trace: list[Tensor] = []
            out.append(_invert_batch(model, layer, xb, x0b, steps, step_size, anneal, use_best, trace))
            errors.append(torch.stack(trace))  # (steps + 1, batch)
    if history is not None:
        history.extend(torch.cat(errors, 1).mean(1).tolist())
    return torch.cat(out)


def _invert_batch(model: nn.Module, layer: nn.Module, x: Tensor, x0: Tensor, steps: int, step_size: float,
                  anneal: bool, use_best: bool, trace: list[Tensor]) -> Tensor:
    with torch.no_grad():
        target = representation(model, x, layer)[0].detach()
    scale = target.norm(dim=1).clamp_min(1e-12)

    def squared_error(cur: Tensor) -> Tensor:
        return (representation(model, cur, layer)[0] - target).pow(2).sum(1)

    return descend(squared_error, x0, steps=steps, step_size=step_size, anneal=anneal, use_best=use_best,
                   trace=trace, measure=lambda sq: sq.sqrt() / scale)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pixel Pearson correlation per sample; NaN where either image is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den, torch.full_like(den, math.nan))


@torch.no_grad()
def inversion_metrics(model: nn.Module, x: Tensor, x_inv: Tensor, y: Tensor) -> dict[str, list[float]]:
    """Per sample: ``rel_error`` ``||R(x_inv) - R(x)|| / ||R(x)||``; ``pearson`` (the headline similarity) and
    ``l2`` of ``x_inv`` to ``x`` in pixels ([0,1]-scaled); ``inv_correct`` (1.0 when the model classifies ``x_inv``
    as ``y``); ``clean_correct`` (``x`` itself); ``feature_norm`` ``||R(x)||``."""
    layer = classifier_layer(model)[1]
    device = _device(model)
    x, x_inv, y = to_float(x, device), to_float(x_inv, device), y.to(device)
    with _eval_mode(model):
        r, logits = representation(model, x, layer)
        r_inv, logits_inv = representation(model, x_inv, layer)
    return {"rel_error": ((r_inv - r).norm(dim=1) / r.norm(dim=1).clamp_min(1e-12)).tolist(),
            "pearson": _pearson(x_inv, x).tolist(),
            "l2": (x_inv - x).flatten(1).norm(dim=1).tolist(),
            "inv_correct": (logits_inv.argmax(1) == y).double().tolist(),
            "clean_correct": (logits.argmax(1) == y).double().tolist(),
            "feature_norm": r.norm(dim=1).tolist()}


# -------------------------------------------------------------------------------------------------
# Statistics and the verdict
# -------------------------------------------------------------------------------------------------


def _summary(values: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """Mean, standard error and a 95% percentile-bootstrap interval of the mean, over the finite values."""
    v = torch.tensor([float(a) for a in values if math.isfinite(a)], dtype=torch.float64)
    n = int(v.numel())
    if n == 0:
        return {"mean": math.nan, "se": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(n, (resamples, n), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"mean": float(v.mean()), "se": se, "ci95": [lo, hi], "n": n}


def compare_groups(unlearnable: Sequence[float], learnable: Sequence[float], *, resamples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Is the similarity on S_U lower than on S_L? Means with 95% bootstrap intervals, and a one-sided
    Mann-Whitney U test (``scipy.stats.mannwhitneyu``, ``alternative="less"``) of S_U < S_L.

    ``holds`` when the S_U mean is lower and the one-sided Mann-Whitney p < 0.05 (the bootstrap intervals are
    reported as supporting evidence: with few samples they collapse to points and prove nothing).
    """
    from scipy.stats import mannwhitneyu  # scipy: slow to import, needed only for the verdict

    su, sl = _summary(unlearnable, resamples, seed), _summary(learnable, resamples, seed + 1)
    a = [float(v) for v in unlearnable if math.isfinite(v)]
    b = [float(v) for v in learnable if math.isfinite(v)]
    p = float(mannwhitneyu(a, b, alternative="less").pvalue) if a and b else math.nan
    lower = su["n"] > 0 and sl["n"] > 0 and su["mean"] < sl["mean"]
    apart = lower and su["ci95"][1] < sl["ci95"][0]
    return {"unlearnable": su, "learnable": sl, "difference": su["mean"] - sl["mean"], "intervals_apart": apart,
            "mann_whitney_p": p, "holds": bool(lower and p < 0.05)}


# -------------------------------------------------------------------------------------------------
# The study over S_U and S_L
# -------------------------------------------------------------------------------------------------


@dataclass
class InversionStudy:
    """What :func:`inversion_study` found: ``report`` (JSON-able: settings, per-sample metrics, summaries,
    verdict) and, per set (``"unlearnable"``, ``"learnable"``), the original and inverted images."""

    report: dict[str, Any]
    originals: dict[str, Tensor] = field(default_factory=dict)
    inverted: dict[str, Tensor] = field(default_factory=dict)


SETS = (("unlearnable", "S_U"), ("learnable", "S_L"))


def inversion_study(model: nn.Module, unlearnable_json: str | Path | Mapping[str, Any], n: int = 32, *,
                    steps: int = 500, step_size: float = 3.0, start: str = "noise", seed: int = 0,
                    anneal: bool = True, batch_size: int = 128, resamples: int = 2000, match_classes: bool = False,
                    regs: Registries | None = None) -> InversionStudy:
    """Invert ``n`` samples of S_U and ``n`` of S_L (drawn with ``seed`` from the indices of an ``unlearnable``
    JSON, sorted) with :func:`invert`, measure them with :func:`inversion_metrics`, and compare the headline
    similarity (pixel Pearson correlation) with :func:`compare_groups`: the paper's claim is that S_U inverts
    worse (collapsed pseudo-features) than S_L (recognisable images). Both sets are inverted in one call, so a
    ``"mean"`` or ``"other"`` start draws on both.

    ``match_classes`` draws the same number of samples of each class from both sets (the classes both hold,
    ``n`` spread over them as evenly as their sizes allow; needs the labels the JSON records): S_U and S_L hold
    different classes in different proportions, and pixel similarity differs between classes.
    """
    sets = dict(read_json(unlearnable_json, "--unlearnable file") if isinstance(unlearnable_json, (str, Path))
                else unlearnable_json)
    missing = [k for k in ("indices_unlearnable", "indices_learnable") if not isinstance(sets.get(k), list)]
    if missing:
        raise InputError(f"the unlearnable file has no {', '.join(missing)}: give a JSON written by "
                         "`robust-distill unlearnable`.")
    if n < 1:
        raise ConfigError([f"n: samples per set must be >= 1, got {n}"], "inversion arguments")
    chosen = _draw_matched(sets, n, seed) if match_classes else {
        key: _draw([int(v) for v in sets[f"indices_{key}"]], n, seed + i) for i, (key, _) in enumerate(SETS)}
    empty = [name for key, name in SETS if not chosen[key]]
    if empty:
        raise InputError(f"{' and '.join(empty)} of the unlearnable file {'is' if len(empty) == 1 else 'are'} empty: "
                         "nothing to invert.")
    x, y = set_images(sets, chosen["unlearnable"] + chosen["learnable"], regs)
    labels = [int(v) for key, _ in SETS for v in _labels(sets, key, chosen[key])]
    if labels and labels != y.tolist():
        raise InputError("the dataset's labels at the unlearnable file's indices differ from those it recorded: "
                         f"is the dataset ({(sets.get('data') or {}).get('dataset')!r}, its root and options) the "
                         "one the runs were trained on?")
    curve: list[float] = []
    x_inv = invert(model, x, steps=steps, step_size=step_size, start=start, seed=seed, anneal=anneal,
                   batch_size=batch_size, history=curve)
    metrics = inversion_metrics(model, x, x_inv, y)
    k = len(chosen["unlearnable"])
    per_set = {key: {name: vals[:k] if key == "unlearnable" else vals[k:] for name, vals in metrics.items()}
               for key, _ in SETS}
    summaries = {name: {key: _summary(per_set[key][name], resamples, seed) for key, _ in SETS}
                 for name in metrics}
    verdict = compare_groups(per_set["unlearnable"][HEADLINE], per_set["learnable"][HEADLINE], resamples=resamples,
                             seed=seed)
    report = {"settings": {"n": n, "steps": steps, "step_size": step_size, "start": start, "seed": seed,
                           "anneal": anneal, "objective": "argmin_{x' in [0,1]^d} ||R(x') - R(x)||_2, "
                           "R = input of the classifier layer (Engstrom et al. 2019, Sec. 3)",
                           "match_classes": match_classes, "layer": classifier_layer(model)[0],
                           "headline": HEADLINE},
              "sizes": {key: len(sets[f"indices_{key}"]) for key, _ in SETS},
              "indices": chosen, "per_sample": per_set, "summary": summaries,
              "error_curve": [curve[0], *curve[max(1, steps // 10)::max(1, steps // 10)]] if curve else [],
              "verdict": {"claim": "S_U inverts worse than S_L (lower pixel Pearson correlation of the inversion "
                                   "to the original)", **verdict}}
    originals = {key: to_float(x, "cpu")[:k] if key == "unlearnable" else to_float(x, "cpu")[k:] for key, _ in SETS}
    inverted = {key: x_inv.cpu()[:k] if key == "unlearnable" else x_inv.cpu()[k:] for key, _ in SETS}
    return InversionStudy(report, originals, inverted)


def _draw(pool: list[int], n: int, seed: int) -> list[int]:
    """``n`` of ``pool`` (all when it holds fewer), drawn with ``seed``, sorted."""
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(pool[j] for j in pick.tolist())


def _draw_matched(sets: Mapping[str, Any], n: int, seed: int) -> dict[str, list[int]]:
    """As many samples of each class from S_U as from S_L, ``n`` in all per set where the sets allow."""
    by_class: dict[str, dict[int, list[int]]] = {}
    for key, _ in SETS:
        idx, lab = sets.get(f"indices_{key}") or [], sets.get(f"labels_{key}")
        if not isinstance(lab, list) or len(lab) != len(idx):
            raise InputError(f"matching classes needs the labels of S_U and S_L; the unlearnable file has no "
                             f"labels_{key} of its indices_{key}.")
        by_class[key] = {}
        for i, c in zip(idx, lab, strict=True):
            by_class[key].setdefault(int(c), []).append(int(i))
    room = {c: min(len(by_class["unlearnable"][c]), len(by_class["learnable"][c]))
            for c in sorted(set(by_class["unlearnable"]) & set(by_class["learnable"]))}
    quota = dict.fromkeys(room, 0)
    while sum(quota.values()) < n and any(quota[c] < room[c] for c in room):  # round-robin over the classes
        for c in room:
            if quota[c] < room[c] and sum(quota.values()) < n:
                quota[c] += 1
    return {key: sorted(i for c in room for i in _draw(by_class[key][c], quota[c], seed + 10 * c + k))
            for k, (key, _) in enumerate(SETS)}


def _labels(sets: Mapping[str, Any], key: str, chosen: list[int]) -> list[int]:
    """The labels the JSON recorded for ``chosen`` (none when it recorded none)."""
    idx, lab = sets.get(f"indices_{key}") or [], sets.get(f"labels_{key}")
    if not isinstance(lab, list) or len(lab) != len(idx):
        return []
    by_index = dict(zip(idx, lab, strict=True))
    return [by_index[i] for i in chosen]


def _fmt(s: Mapping[str, Any], digits: int = 3) -> str:
    lo, hi = s["ci95"]
    return f"{s['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_study(report: Mapping[str, Any], title: str = "") -> str:
    """The study as Markdown: one row per set (means with 95% bootstrap intervals), the verdict."""
    s, v, cfg = report["summary"], report["verdict"], report["settings"]
    rows = ["| set | n | pixel Pearson r (headline) | L2 distance | rel. representation error | "
            "x_inv classified as y | x classified as y | ||R(x)|| |", "|---|---|---|---|---|---|---|---|"]
    for key, name in SETS:
        rows.append(f"| {name} ({report['sizes'][key]} in the file) | {s['pearson'][key]['n']} | "
                    f"{_fmt(s['pearson'][key])} | {_fmt(s['l2'][key], 2)} | {_fmt(s['rel_error'][key])} | "
                    f"{_fmt(s['inv_correct'][key], 2)} | {_fmt(s['clean_correct'][key], 2)} | "
                    f"{_fmt(s['feature_norm'][key], 2)} |")
    verdict = "**holds**" if v["holds"] else "**does not hold**"
    decay = " (linearly decayed)" if cfg["anneal"] else ""
    matched = "; as many samples of each class in S_U as in S_L" if cfg.get("match_classes") else ""
    apart = "apart" if v["intervals_apart"] else "overlap"
    lines = [f"# Representation inversion on S_U and S_L{': ' + title if title else ''}", "",
             f"Inversion of R = the input of `{cfg['layer']}` from {cfg['start']} starts, {cfg['steps']} "
             f"normalised-gradient steps of L2 length {cfg['step_size']:g}{decay}, seed {cfg['seed']}{matched}; "
             "means with 95% bootstrap intervals.", "", *rows, "",
             f"*{v['claim']}*: {verdict} (difference of means {v['difference']:+.3f}; intervals {apart}; "
             f"one-sided Mann-Whitney p = {v['mann_whitney_p']:.3g})."]
    return "\n".join(lines)


def plot_inversions(study: InversionStudy, path: str | Path, columns: int = 8) -> Path:
    """A grid PNG: rows S_L original, S_L inverted, S_U original, S_U inverted (first ``columns`` samples each).

    matplotlib is imported when the plot is drawn: an optional dependency, and slow to import.
    """
    import matplotlib  # optional: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: plots only

    rows = [("S_L original", study.originals["learnable"]), ("S_L inverted", study.inverted["learnable"]),
            ("S_U original", study.originals["unlearnable"]), ("S_U inverted", study.inverted["unlearnable"])]
    cols = max(1, min(columns, max(len(r[1]) for r in rows)))
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols + 1.2, 1.3 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                img = images[c].clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
