"""In-plane and out-of-plane PGD (Yang et al., AISTATS 2021, Sec. 5.4, Table 2, Fig. 7).

"For each instance x, we apply the standard l-inf PGD attack twice with different initialization to obtain
x'_in and x'_out, while x'_in has a smaller distance to the input subspace." The input subspace is the
top-k PCA subspace of the lowest layer's input patches (:class:`robust_distill.analysis.subspace.InputSubspace`);
the distance of an image to it is the mean squared distance of its patches.

* evaluation attacks ``pgd20_inplane`` / ``pgd20_outplane``: PGD-20 (step eps/4, uniform start, CE to the
  label) from two starts drawn from a fixed seed, keeping per sample the one closer to / farther from the
  subspace. Both attacks draw the same two starts, so a point robust to both is robust to 2-restart PGD-20
  (the paper's "both", i.e. the standard attack);
* inner attack ``subspace_pgd`` (``keep: in | out``): the same selection on oracle-adversarial PGD
  (:class:`~robust_distill_plugins.oracle.OraclePGD`'s objective) for in-plane / out-of-plane AT;
* methods ``inplane_at`` and ``outplane_at``: logit training on x'_in / x'_out.

The subspace is read from a file (``subspace: DIR/input_subspace.pt``, written by ``robust-distill
specialization``) or, by default, fitted on each clean batch with the geometry of the attacked model's
first convolution (``k`` directions, or as many as hold ``explained_variance`` of the variance): a batch
of images gives tens of thousands of patches for a covariance of a few hundred entries.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill import (
    BNMode,
    EvalAttack,
    InputSubspace,
    Keep,
    Part,
    Start,
    Step,
    first_layer,
    fit_input_subspace,
    format_eps,
    hookimpl,
    pgd_restarts,
    select_by_subspace,
)
from robust_distill_plugins.oracle import ROLE, OracleLoss, OraclePGD, OracleTarget, oracle_method


class SubspaceSource:
    """Where the input subspace comes from: a saved file (loaded once) or the clean batch at hand."""

    def __init__(self, subspace: str | None = None, k: int | None = None, explained_variance: float = 0.99) -> None:
        if subspace is not None and not Path(subspace).is_file():
            raise FileNotFoundError(f"input-subspace file {subspace!r} does not exist; write one with "
                                    "`robust-distill specialization ... --out DIR` (DIR/input_subspace.pt)")
        if not 0 < explained_variance <= 1:
            raise ValueError(f"explained_variance must be in (0, 1], got {explained_variance}")
        self.path, self.k, self.explained_variance = subspace, k, explained_variance
        self._loaded: InputSubspace | None = None

    def __call__(self, x: Tensor, model: nn.Module) -> InputSubspace:
        if self.path is not None:
            if self._loaded is None:
                self._loaded = InputSubspace.load(self.path)
                if self.k is not None:
                    self._loaded = self._loaded.with_k(self.k)
            return self._loaded
        _, conv = first_layer(model)
        return fit_input_subspace(x.detach(), conv, k=self.k, explained_variance=self.explained_variance)


def _check_keep(keep: str) -> None:
    if keep not in ("in", "out"):
        raise ValueError(f"keep must be 'in' (x'_in, closer to the input subspace) or 'out', got {keep!r}")


class SubspacePGD(OraclePGD):
    """In-plane (``keep: in``) or out-of-plane (``keep: out``) oracle-adversarial examples (Sec. 5.4).

    Runs the oracle PGD of :class:`~robust_distill_plugins.oracle.OraclePGD` from ``restarts`` random starts
    and keeps, per sample, the result closest to / farthest from the input subspace.

    :param keep: ``in`` or ``out``.
    :param restarts: PGD runs to choose from (2 in the paper).
    :param subspace: an input-subspace file; default: fitted on every clean batch (``k`` or
        ``explained_variance``, with the student's first convolution).
    :param loss: / ``target`` / ``role`` / ``start`` / ``clamp_start`` / ``bn_mode``: as ``oracle_pgd``.
    """

    def __init__(self, keep: Keep = "in", restarts: int = 2, subspace: str | None = None, k: int | None = None,
                 explained_variance: float = 0.99, loss: OracleLoss = "l2", target: OracleTarget = "teacher_adv",
                 role: str = ROLE, start: Start = "uniform", clamp_start: bool = True,
                 bn_mode: BNMode = "eval") -> None:
        super().__init__(loss=loss, target=target, role=role, start=start, clamp_start=clamp_start, bn_mode=bn_mode)
        _check_keep(keep)
        if restarts < 2:
            raise ValueError(f"restarts must be >= 2 to choose between PGD results, got {restarts}")
        self.keep, self.restarts = keep, restarts
        self.source = SubspaceSource(subspace, k, explained_variance)

    def __call__(self, step: Step) -> Tensor:
        threat = self.threat(step)
        with self.attack_context(step):
            candidates = pgd_restarts(self.make_objective(step), step.x, restarts=self.restarts, eps=threat.eps,
                                      step_size=threat.step_size, steps=threat.steps, start=self.start,
                                      clamp_start=self.clamp_start)
        return select_by_subspace(candidates, self.source(step.x, step.student_module), self.keep)

    def __repr__(self) -> str:
        return f"SubspacePGD(keep={self.keep!r}, restarts={self.restarts}, loss={self.loss!r})"


class SubspaceEvalPGD(EvalAttack):
    """PGD (CE to the label, uniform start) from ``restarts`` starts drawn from ``seed``, keeping per sample the
    result closer to (``keep="in"``) or farther from (``"out"``) the input subspace (Sec. 5.4, Table 2)."""

    def __init__(self, eps: float, keep: Keep = "in", steps: int = 20, step_size: float | None = None,
                 restarts: int = 2, subspace: str | None = None, k: int | None = None,
                 explained_variance: float = 0.99, seed: int = 0) -> None:
        _check_keep(keep)
        self.eps, self.keep, self.steps, self.restarts, self.seed = eps, keep, steps, restarts, seed
        self.step_size = step_size if step_size is not None else eps / 4
        self.source = SubspaceSource(subspace, k, explained_variance)
        self.name = f"pgd{steps}_{keep}plane"
        self.label = (f"PGD-{steps} {'in' if keep == 'in' else 'out-of'}-plane (best of {restarts} starts, "
                      f"step {format_eps(self.step_size)})")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            candidates = pgd_restarts(lambda xa: F.cross_entropy(model(xa), y, reduction="sum"), x,
                                      restarts=self.restarts, eps=self.eps, step_size=self.step_size,
                                      steps=self.steps, start="uniform", clamp_start=True)
        return select_by_subspace(candidates, self.source(x, model), self.keep)


def pgd20_inplane(eps: float, steps: int = 20, step_size: float | None = None, restarts: int = 2,
                  subspace: str | None = None, k: int | None = None, explained_variance: float = 0.99,
                  seed: int = 0) -> EvalAttack:
    """In-plane PGD-20: of two PGD-20 runs, the one closer to the input subspace (Table 2)."""
    return SubspaceEvalPGD(eps, "in", steps, step_size, restarts, subspace, k, explained_variance, seed)


def pgd20_outplane(eps: float, steps: int = 20, step_size: float | None = None, restarts: int = 2,
                   subspace: str | None = None, k: int | None = None, explained_variance: float = 0.99,
                   seed: int = 0) -> EvalAttack:
    """Out-of-plane PGD-20: of two PGD-20 runs, the one farther from the input subspace (Table 2)."""
    return SubspaceEvalPGD(eps, "out", steps, step_size, restarts, subspace, k, explained_variance, seed)


INPLANE_AT = oracle_method("inplane_at", Part("subspace_pgd", {"keep": "in", "restarts": 2}),
                           "in-plane oracle AT: logit training on the PGD restart closer to the input subspace",
                           where="Sec. 5.4, Table 2")
OUTPLANE_AT = oracle_method("outplane_at", Part("subspace_pgd", {"keep": "out", "restarts": 2}),
                            "out-of-plane oracle AT: logit training on the PGD restart farther from the subspace",
                            where="Sec. 5.4, Table 2")


@hookimpl
def rd_register_inner_attacks(registry):
    registry.register(SubspacePGD, name="subspace_pgd",
                      help="in-/out-of-plane oracle PGD: the restart closer to / farther from the input subspace")


@hookimpl
def rd_register_eval_attacks(registry):
    registry.register(pgd20_inplane, name="pgd20_inplane")
    registry.register(pgd20_outplane, name="pgd20_outplane")


@hookimpl
def rd_register_methods(registry):
    registry.register(INPLANE_AT)
    registry.register(OUTPLANE_AT)
