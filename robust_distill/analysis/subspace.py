"""In-subspace and out-of-subspace specialization (Yang et al., AISTATS 2021, "Understanding Robustness in
Teacher-Student Setting: A New Perspective", Sec. 4.1, 5.3, 5.4).

The inputs of a network's lowest layer are the patches its first convolution sees (``C x k x k``
dimensions). Their PCA gives the input subspace ``X``: the top-``k`` principal directions ``U``
(:class:`InputSubspace`). For a teacher node ``j`` and a student node ``k`` of that layer, with
``dw = w_k / ||w_k|| - w*_j / ||w*_j||`` (weights only, flattened like the patches), Sec. 5.3 defines

* ``epsilon_in[k, j] = ||U U^T dw||``: how far the student node is from the teacher node inside ``X``;
* ``epsilon_out[k, j] = ||(I - U U^T) dw||``: how far it is outside ``X``, where data barely constrain it.

The *sorted curves* pair every teacher node with the student node of highest normalized correlation
(NC, :func:`robust_distill.analysis.specialization.normalized_correlation`) and sort the two errors; the paper also
correlates ``epsilon_in`` with NC over every pair (Fig. 2, right).

The in-plane / out-of-plane attacks (Sec. 5.4, Table 2) run PGD twice from two random starts and keep, per
sample, the result closer to (``in``) or farther from (``out``) the input subspace, measured by
:meth:`InputSubspace.out_distance`; :func:`pgd_restarts` and :func:`select_by_subspace` are the two halves,
shared by the evaluation attacks, the inner attacks for training and :func:`oracle_robustness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill.core.attacks import Start, frozen_parameters, pgd
from robust_distill.core.losses import squared_l2
from robust_distill.data.memory import iterate_eval, to_float
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import load_checkpoint

__all__ = [
    "InputSubspace", "fit_input_subspace", "first_layer", "node_weights", "epsilon_matrices", "EpsilonStats",
    "epsilon_analysis", "pearson", "pgd_restarts", "select_by_subspace", "oracle_robustness", "Keep",
]

Keep = Literal["in", "out"]
Keep.__doc__ = "Which PGD restart a subspace attack keeps: the one closer to the input subspace, or farther from it."
SUBSPACE_FORMAT = "robust-distill/input-subspace/1"


# -------------------------------------------------------------------------------------------------
# The input subspace
# -------------------------------------------------------------------------------------------------


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass
class InputSubspace:
    """The top-``k`` PCA subspace of the lowest layer's input patches.

    :ivar mean: (d,) mean patch.
    :ivar vectors: (d, m) orthonormal principal directions, largest variance first (m = d when fitted).
    :ivar eigenvalues: (d,) the variance along every principal direction, descending.
    :ivar k: how many leading directions span the subspace; ``basis`` = ``vectors[:, :k]`` is ``U``.
    :ivar in_channels: channels of the input image; ``kernel_size``/``stride``/``padding``/``dilation``
        the first convolution's geometry (``d = in_channels * kh * kw``).
    """

    mean: Tensor
    vectors: Tensor
    eigenvalues: Tensor
    k: int
    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.vectors.shape[1]:
            raise ValueError(f"k must be between 1 and {self.vectors.shape[1]} (the known directions), got {self.k}")

    @property
    def basis(self) -> Tensor:
        """``U``: the (d, k) orthonormal basis of the subspace."""
        return self.vectors[:, :self.k]

    @property
    def dim(self) -> int:
        """The number of principal directions kept."""
        return int(self.vectors.shape[0])

    @property
    def explained(self) -> float:
        """Fraction of the patch variance inside the subspace."""
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[:self.k].sum()) / total if total > 0 else 1.0

    def patches(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, L, d) patches, flattened like the convolution's weights (C, kh, kw)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the subspace was fitted on {self.in_channels}-channel inputs, got {x.shape[1]}")
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2)

    def project_in(self, v: Tensor) -> Tensor:
        """``U U^T v`` for vectors ``v`` of size d along the last dimension."""
        u = self.basis.to(v)
        return (v @ u) @ u.T

    def project_out(self, v: Tensor) -> Tensor:
        """``(I - U U^T) v``."""
        return v - self.project_in(v)

    def out_distance(self, x: Tensor) -> Tensor:
        """Per image: the mean over its patches of the squared distance to the (affine) input subspace,
        ``||(I - U U^T)(p - mean)||^2``. Differentiable in ``x``."""
        residual = self.project_out(self.patches(x) - self.mean.to(x))
        return residual.pow(2).sum(-1).mean(-1)

    def with_k(self, k: int) -> InputSubspace:
        """The same PCA with another number of directions."""
        return replace(self, k=int(k))

    # -- persistence (plain tensors and ints: loads with weights_only=True) -----------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers: what :meth:`save` writes and :meth:`from_state` reads."""
        return {"format": SUBSPACE_FORMAT, "mean": self.mean, "vectors": self.vectors, "eigenvalues": self.eigenvalues,
                "k": self.k, "in_channels": self.in_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation)}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically; returns the path."""
        atomic_save(self.state_dict(), path)
        return Path(path)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> InputSubspace:
        """The subspace :meth:`state_dict` describes."""
        if state.get("format") != SUBSPACE_FORMAT:
            raise ValueError(f"not an input-subspace file (format {state.get('format')!r}, expected "
                             f"{SUBSPACE_FORMAT!r}); write one with `robust-distill specialization --out DIR` "
                             "(DIR/input_subspace.pt) or InputSubspace.save().")
        return cls(state["mean"], state["vectors"], state["eigenvalues"], int(state["k"]), int(state["in_channels"]),
                   _pair(state["kernel_size"]), _pair(state["stride"]), _pair(state["padding"]),
                   _pair(state["dilation"]))

    @classmethod
    def load(cls, path: str | Path) -> InputSubspace:
        """The subspace saved at ``path`` (read without running code from the file)."""
        return cls.from_state(load_checkpoint(path))

    def describe(self) -> str:
        """One line for logs: the dimension and the variance it keeps."""
        return (f"top {self.k} of {self.dim} principal directions of the {self.in_channels}x{self.kernel_size[0]}x"
                f"{self.kernel_size[1]} input patches ({100 * self.explained:.2f}% of their variance)")


def choose_k(eigenvalues: Tensor, *, k: int | None = None, explained_variance: float = 0.99) -> int:
    """``k`` if given, else the smallest ``k`` whose top-``k`` eigenvalues hold ``explained_variance`` of the
    total variance."""
    d = int(eigenvalues.numel())
    if k is not None:
        if not 1 <= k <= d:
            raise ValueError(f"k must be between 1 and the patch dimension {d}, got {k}")
        return int(k)
    if not 0 < explained_variance <= 1:
        raise ValueError(f"explained_variance must be in (0, 1], got {explained_variance}")
    frac = eigenvalues.double().cumsum(0) / eigenvalues.double().sum()
    return min(int((frac < explained_variance - 1e-12).sum()) + 1, d)


@torch.no_grad()
def fit_input_subspace(x: Tensor, conv: nn.Conv2d | None = None, *, kernel_size: int | Sequence[int] = 3,
                       stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                       dilation: int | Sequence[int] = 1, k: int | None = None, explained_variance: float = 0.99,
                       batch_size: int = 500) -> InputSubspace:
    """PCA of the patches of images ``x`` (uint8 or float in [0, 1]) as the convolution ``conv`` sees them.

    The geometry is taken from ``conv`` when given (padded positions included, as the layer sees them),
    else from the keyword arguments. ``k`` directions, or as many as hold ``explained_variance`` of the
    variance (Sec. 5.3 keeps 17 of the 27 directions of CIFAR-10's 3x3x3 patches). The covariance is
    accumulated in float64 over batches, so any number of images fits in memory.
    """
    if conv is not None:
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero-padded convolutions with numeric padding are supported")
        kernel_size, stride, padding, dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    probe = InputSubspace(torch.zeros(1), torch.zeros(1, 1), torch.zeros(1), 1, int(x.shape[1]), _pair(kernel_size),
                          _pair(stride), _pair(padding), _pair(dilation))
    total, outer, count = None, None, 0
    for _, xb, _ in iterate_eval(x, torch.zeros(x.shape[0]), batch_size):
        p = probe.patches(to_float(xb, xb.device)).reshape(-1, probe.in_channels * probe.kernel_size[0]
                                                        * probe.kernel_size[1]).double()
        total = p.sum(0) if total is None else total + p.sum(0)
        outer = p.T @ p if outer is None else outer + p.T @ p
        count += p.shape[0]
    if count < 2:
        raise ValueError("need at least two patches to fit an input subspace")
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0.0), vectors.flip(1)
    # a fixed sign per direction (largest entry positive): the same data give the same basis
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True))).squeeze(0)
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    return InputSubspace(mean.float(), vectors.float().contiguous(), eigenvalues.float(),
                         choose_k(eigenvalues, k=k, explained_variance=explained_variance), probe.in_channels,
                         probe.kernel_size, probe.stride, probe.padding, probe.dilation)


# -------------------------------------------------------------------------------------------------
# Weights of the lowest layer
# -------------------------------------------------------------------------------------------------


def first_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Conv2d]:
    """The lowest convolution: the module ``name``, or the first ``nn.Conv2d`` in registration order."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise ValueError(f"no layer {name!r} in {type(model).__name__}; its convolutions are: "
                             f"{', '.join(convs[:20]) or '(none)'}")
        if not isinstance(modules[name], nn.Conv2d):
            raise ValueError(f"layer {name!r} is a {type(modules[name]).__name__}, not an nn.Conv2d")
        return name, modules[name]  # type: ignore[return-value]
    for n, m in modules.items():
        if isinstance(m, nn.Conv2d):
            return n, m
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d: the input-subspace analysis needs a "
                     "convolutional lowest layer")


def _following_batchnorm(model: nn.Module, conv_name: str, conv: nn.Conv2d) -> nn.BatchNorm2d | None:
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    i = names.index(conv_name)
    if i + 1 < len(names):
        nxt = modules[names[i + 1]]
        if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == conv.out_channels:
            return nxt
    return None


@torch.no_grad()
def node_weights(model: nn.Module, name: str | None = None, *, fold_batchnorm: bool = True) -> Tensor:
    """(nodes, d) incoming weights of the lowest layer's nodes, flattened like the patches (C, kh, kw).

    With ``fold_batchnorm`` an ``nn.BatchNorm2d`` registered right after the convolution (conv-BN-ReLU
    blocks) is folded in: node ``c``'s effective weight is ``w_c * gamma_c / sqrt(var_c + eps)``, whose
    direction differs from ``w_c`` where ``gamma_c < 0``.
    """
    conv_name, conv = first_layer(model, name)
    w = conv.weight.detach().float().reshape(conv.out_channels, -1).cpu()
    bn = _following_batchnorm(model, conv_name, conv) if fold_batchnorm else None
    if bn is not None and bn.affine:
        scale = bn.weight.detach().float().cpu()
        if bn.running_var is not None:
            scale = scale / (bn.running_var.detach().float().cpu() + bn.eps).sqrt()
        w = w * scale[:, None]
    return w


# -------------------------------------------------------------------------------------------------
# epsilon_in / epsilon_out
# -------------------------------------------------------------------------------------------------


def epsilon_matrices(student_w: Tensor, teacher_w: Tensor, subspace: InputSubspace) -> tuple[Tensor, Tensor]:
    """``(epsilon_in, epsilon_out)``, each (student nodes, teacher nodes), of Sec. 5.3.

    ``student_w`` (K, d) and ``teacher_w`` (J, d) are the nodes' incoming weights; each row is normalised,
    ``dw[k, j] = w_k/||w_k|| - w*_j/||w*_j||``, ``epsilon_in = ||U U^T dw||``, ``epsilon_out =
    ||(I - U U^T) dw||``, so ``epsilon_in^2 + epsilon_out^2 = ||dw||^2 = 2 - 2 cos(w_k, w*_j)``.
    """
    if student_w.shape[1] != subspace.dim or teacher_w.shape[1] != subspace.dim:
        raise ValueError(f"weights of size {student_w.shape[1]} (student) and {teacher_w.shape[1]} (teacher) do "
                         f"not match the {subspace.dim}-dimensional patches of the subspace")
    s = F.normalize(student_w.double(), dim=1)
    t = F.normalize(teacher_w.double(), dim=1)
    dw = s[:, None, :] - t[None, :, :]
    u = subspace.basis.double()
    inside = dw @ u  # coordinates in the orthonormal basis: ||U U^T v|| = ||U^T v||
    eps_in = inside.norm(dim=-1)
    eps_out = (dw - inside @ u.T).norm(dim=-1)
    return eps_in.float(), eps_out.float()


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson's correlation of two equally long vectors (NaN if one is constant)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else math.nan


@dataclass
class EpsilonStats:
    """The lowest layer's in-/out-of-subspace specialization errors.

    :ivar eps_in: / ``eps_out``: (student nodes, teacher nodes) matrices.
    :ivar rho: (student nodes, teacher nodes) NC matrix of the same layer.
    :ivar best_student: for each teacher node, the student node of highest NC.
    :ivar curve_in: / ``curve_out``: the errors of those pairs, sorted ascending (Fig. 4: lower is better).
    :ivar pearson_in: / ``pearson_out``: Pearson's correlation between NC and the error over every pair
        (Fig. 2, right: strongly negative for epsilon_in).
    """

    eps_in: Tensor
    eps_out: Tensor
    rho: Tensor
    best_student: list[int]
    curve_in: list[float]
    curve_out: list[float]
    pearson_in: float
    pearson_out: float
    subspace_k: int
    subspace_dim: int
    explained: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (curves, correlations, per-teacher-node pairs; not the full matrices)."""
        j = torch.arange(len(self.best_student))
        k = torch.tensor(self.best_student)
        return {"k": self.subspace_k, "dim": self.subspace_dim, "explained_variance": self.explained,
                "pearson_nc_eps_in": self.pearson_in, "pearson_nc_eps_out": self.pearson_out,
                "mean_eps_in": float(self.eps_in[k, j].mean()), "mean_eps_out": float(self.eps_out[k, j].mean()),
                "curve_eps_in": self.curve_in, "curve_eps_out": self.curve_out,
                "pairs": [{"teacher_node": int(a), "student_node": int(b), "nc": float(self.rho[b, a]),
                           "eps_in": float(self.eps_in[b, a]), "eps_out": float(self.eps_out[b, a])}
                          for a, b in zip(j.tolist(), k.tolist(), strict=True)]}


def epsilon_analysis(student_w: Tensor, teacher_w: Tensor, subspace: InputSubspace, rho: Tensor) -> EpsilonStats:
    """epsilon_in / epsilon_out of every pair, the sorted curves of the best-NC pairs and their correlation
    with NC (Sec. 5.3). ``rho`` is the lowest layer's NC matrix (student nodes, teacher nodes)."""
    eps_in, eps_out = epsilon_matrices(student_w, teacher_w, subspace)
    if tuple(rho.shape) != tuple(eps_in.shape):
        raise ValueError(f"the NC matrix has shape {tuple(rho.shape)} but the lowest layers have "
                         f"{tuple(eps_in.shape)} (student, teacher) nodes: compute NC on the activations of "
                         "the convolutions whose weights are compared")
    rho = rho.float()
    best = rho.argmax(dim=0)
    j = torch.arange(rho.shape[1])
    return EpsilonStats(eps_in, eps_out, rho, best.tolist(), eps_in[best, j].sort().values.tolist(),
                        eps_out[best, j].sort().values.tolist(), pearson(rho, eps_in), pearson(rho, eps_out),
                        subspace.k, subspace.dim, subspace.explained)


# -------------------------------------------------------------------------------------------------
# In-plane / out-of-plane PGD
# -------------------------------------------------------------------------------------------------


def pgd_restarts(objective: Callable[[Tensor], Tensor], x: Tensor, *, restarts: int, eps: float,
                 step_size: float, steps: int, start: Start = "uniform", clamp_start: bool = True) -> list[Tensor]:
    """``restarts`` runs of :func:`robust_distill.core.attacks.pgd` from independent random starts."""
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if restarts > 1 and start == "none":
        raise ValueError("several restarts need a random start ('uniform' or 'gaussian'), not 'none'")
    return [pgd(objective, x, eps=eps, step_size=step_size, steps=steps, start=start, clamp_start=clamp_start)
            for _ in range(restarts)]


@torch.no_grad()
def select_by_subspace(candidates: Sequence[Tensor], subspace: InputSubspace, keep: Keep) -> Tensor:
    """Per sample, the candidate closest to (``keep="in"``) or farthest from (``"out"``) the input subspace
    by :meth:`InputSubspace.out_distance` (Sec. 5.4: x'_in and x'_out of two PGD restarts)."""
    if keep not in ("in", "out"):
        raise ValueError(f"keep must be 'in' or 'out', got {keep!r}")
    dist = torch.stack([subspace.out_distance(c) for c in candidates])  # (restarts, B)
    pick = dist.argmin(0) if keep == "in" else dist.argmax(0)
    stacked = torch.stack(list(candidates))
    return stacked[pick, torch.arange(stacked.shape[1], device=stacked.device)]


@torch.no_grad()
def oracle_robustness(student: nn.Module, teacher: nn.Module, x: Tensor, *, eps: float, step_size: float,
                      steps: int, subspace: InputSubspace | None = None, restarts: int = 2, batch_size: int = 500,
                      device: str | torch.device = "cpu", seed: int = 0) -> dict[str, float]:
    """Agreement of the student with the oracle teacher, clean and under attack (Sec. 4.2, 5.4).

    * ``clean``: ``argmax S(x) == argmax T(x)``;
    * ``oracle``: x' maximises ``||S(x') - T(x')||^2`` (Eq. 3 with the L2 loss, through both networks,
      ``restarts`` uniform starts); a sample counts if ``argmax S(x') == argmax T(x')`` for every restart
      (Table 1's robust accuracy);
    * ``oracle_in`` / ``oracle_out`` (with a ``subspace``): the same with only the restart closer to /
      farther from the input subspace (Table 2's in-plane and out-of-plane attacks; ``oracle`` is "both");
    * ``data``: x' maximises ``CE(S(x'), argmax T(x))`` through the student only, the label of the clean
      point (Eq. 4, data-adversarial), and counts if ``argmax S(x') == argmax T(x)``.

    Every robust count also requires clean agreement (a point the student already gets wrong is not robust,
    as RobustBench counts): the L2 objective does not target the argmax, and from a disagreeing point it can
    reach an agreeing one.

    Runs under ``torch.random.fork_rng`` seeded with ``seed``; the models are put in eval mode.
    """
    device = torch.device(device)
    student, teacher = student.eval().to(device), teacher.eval().to(device)
    counts: dict[str, float] = {}
    n = 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), frozen_parameters(student, teacher):
        torch.manual_seed(seed)
        for _, xb, _ in iterate_eval(x, torch.zeros(x.shape[0]), batch_size):
            xb = to_float(xb, device)
            label = teacher(xb).argmax(1)
            out = {"clean": student(xb).argmax(1) == label}
            with torch.enable_grad():
                cands = pgd_restarts(lambda xa: squared_l2(student(xa), teacher(xa), reduction="sum"), xb,
                                     restarts=restarts, eps=eps, step_size=step_size, steps=steps)
                data = pgd(lambda xa, label=label: F.cross_entropy(student(xa), label, reduction="sum"), xb, eps=eps,
                           step_size=step_size, steps=steps, start="uniform")
            clean = out["clean"]
            agree = [student(c).argmax(1) == teacher(c).argmax(1) for c in cands]
            out["oracle"] = clean & torch.stack(agree).all(0)
            if subspace is not None:
                for keep in ("in", "out"):
                    sel = select_by_subspace(cands, subspace, keep)  # type: ignore[arg-type]
                    out[f"oracle_{keep}"] = clean & (student(sel).argmax(1) == teacher(sel).argmax(1))
            out["data"] = clean & (student(data).argmax(1) == label)
            for key, ok in out.items():
                counts[key] = counts.get(key, 0.0) + float(ok.sum())
            n += xb.shape[0]
    return {key: c / max(n, 1) for key, c in counts.items()}
