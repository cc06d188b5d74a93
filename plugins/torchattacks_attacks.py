"""Evaluation attacks: torchattacks' PGD/FGSM/APGD, CW-inf (margin loss), and the reference AutoAttack.

Names and protocols (``shared/reference/ard_methods.md`` §1.4), for an L-inf radius ``eps``:

* ``clean``: no attack;
* ``fgsm``: one step of ``eps``, no random start (AdaAD/CIARD/PeerAiD's FGSM);
* ``pgd20``: 20 steps of ``eps/4`` (2/255 at 8/255, "PGD_SAT"), uniform random start;
* ``pgd20_trades``: 20 steps of ``0.003 * eps/(8/255)`` (0.003 at 8/255, "PGD_TRADES"), uniform start;
* ``pgd10``: 10 steps of ``eps/4`` (AdaAD's checkpoint selection);
* ``cw_inf``: CW margin loss with kappa 50, 30 steps of ``eps/4``, zero init (IAD/CIARD's CW-inf);
* ``autoattack``: AutoAttack *standard* (APGD-CE, APGD-T, FAB-T, Square) with the reference
  implementation (``pyautoattack``, fra31/auto-attack), as RobustBench reports it;
* ``autoattack_apgd``: the two APGD attacks of AutoAttack standard (APGD-CE, then APGD-T on the points
  still robust), reference implementation: the cheap subset that does almost all of AutoAttack's work on
  non-obfuscated models (FAB-T and Square rarely flip a further point; Croce & Hein 2020, Table 2);
* ``autoattack_fast``: torchattacks' AutoAttack (10 iterations per attack, not comparable with papers);
* ``apgd_ce``: APGD with the CE loss (100 iterations), torchattacks.

APGD, FAB and Square re-seed the global RNG; :func:`robust_distill.engine.evaluation.evaluate` runs every attack
inside ``torch.random.fork_rng``, so training randomness is unaffected, and seeds the RNG per chunk of
examples (so torchattacks' random starts, too, depend only on an example's chunk).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robust_distill import EvalAttack, Progress, format_eps, hookimpl, import_autoattack, pgd, scoped


def _torchattacks() -> Any:
    """torchattacks, imported by the first attack that needs it (not when plugins load)."""
    import torchattacks

    return torchattacks


class Clean(EvalAttack):
    name, label, eps = "clean", "Clean", 0.0

    def __init__(self, eps: float = 0.0) -> None:
        pass

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x


class TorchattacksAttack(EvalAttack):
    """A torchattacks attack built for the model at hand (torchattacks holds the model by reference)."""

    def __init__(self, name: str, label: str, eps: float, build: Callable[[nn.Module], Any]) -> None:
        self.name, self.label, self.eps, self._build = name, label, eps, build

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self._build(model)(x, y)


def cw_margin(logits: Tensor, y: Tensor, kappa: float) -> Tensor:
    """``-relu(z_y - max_{k != y} z_k + kappa)`` per sample (IAD's ``cwloss``; to be maximised)."""
    onehot = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    correct = logits[onehot]
    other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
    return -torch.relu(correct - other + kappa)


class CWInf(EvalAttack):
    """CW-inf: PGD on the CW margin loss (kappa 50, 30 steps of eps/4, zero init)."""

    name = "cw_inf"

    def __init__(self, eps: float, steps: int = 30, step_size: float | None = None, kappa: float = 50.0,
                 start: str = "none") -> None:
        self.eps, self.steps, self.kappa, self.start = eps, steps, kappa, start
        self.step_size = step_size if step_size is not None else eps / 4
        self.label = f"CW-inf ({steps} x {format_eps(self.step_size)}, kappa {kappa:g})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return pgd(lambda xa: cw_margin(model(xa), y, self.kappa).sum(), x, eps=self.eps,
                   step_size=self.step_size, steps=self.steps, start=self.start,  # type: ignore[arg-type]
                   clamp_start=True)


class ReferenceAutoAttack(EvalAttack):
    """AutoAttack standard from ``pyautoattack`` (fra31's reference implementation), seed 0.

    Each call gets a fixed chunk of ``batch_size`` (500) examples (``chunk_size``) and runs
    ``run_standard_evaluation`` on it exactly as RobustBench does, so on up to 500 examples the numbers are
    RobustBench's. Why chunks: in the reference code an example's result depends on the other examples of
    its batch (checked in pyautoattack 0.2.0): APGD-CE and APGD-T draw their random start for the whole
    batch (``torch.rand(x.shape)`` after re-seeding), APGD-T moves to the next target class only with the
    points still robust, regrouped, and Square draws its window positions once per iteration for all the
    points not yet broken (FAB-T, one restart without a random start, and the target classes, taken from
    each example's own logits, are per example). Over more than 500 examples, ``run_standard_evaluation``
    would regroup the survivors of every stage across the whole set; in fixed chunks a result depends only
    on the chunk, which is what lets :func:`robust_distill.engine.evaluation.evaluate` share the chunks out over
    ``torchrun`` processes, and attack several at once in worker processes on one GPU (``concurrency``; the
    RNG it re-seeds is the process's own), and still return the single-process numbers exactly.
    """

    name = "autoattack"

    @property
    def chunk_size(self) -> int:
        return self.batch_size

    def __init__(self, eps: float, version: str = "standard", seed: int = 0, num_classes: int = 10,
                 batch_size: int = 500, attacks_to_run: Sequence[str] = ()) -> None:
        self.eps, self.version, self.seed, self.num_classes = eps, version, seed, num_classes
        self.batch_size, self.attacks_to_run = batch_size, list(attacks_to_run)
        self.label = f"AutoAttack ({' + '.join(attacks_to_run) if attacks_to_run else version})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        pyaa = import_autoattack()
        aa = pyaa.AutoAttack(model, norm="Linf", eps=self.eps, version=self.version, device=x.device,
                             seed=self.seed, attacks=self.attacks_to_run or None)
        if self.version == "custom":
            aa.apgd.n_restarts = 1  # standard's settings (custom otherwise keeps 5 APGD-CE restarts)
        # 9 target classes (the reference default) need >= 10 classes; fewer classes get all the others.
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, self.num_classes - 1)
        with _stage_progress(aa, x.shape[0], self.batch_size):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv.to(x.device)


class _StageProgress(logging.Handler):
    """AutoAttack's stages as progress (:func:`robust_distill.engine.progress.scoped`): one per stage (``apgd-t``),
    counting its sub-attack runs (a restart, or a target class of APGD-T / FAB-T, per batch).

    pyautoattack logs (at DEBUG) the initial accuracy, ``running <attack>`` and ``robust accuracy after <ATTACK>``;
    the runs are counted by wrapping ``attack_single_run`` of this AutoAttack object's sub-attacks.
    """

    def __init__(self, aa: Any, n: int, batch_size: int) -> None:
        super().__init__(logging.DEBUG)
        self.aa, self.n, self.batch_size = aa, n, batch_size
        self.robust = n
        self.stage: Progress | None = None

    def _runs_per_batch(self, attack: str) -> int:
        aa = self.aa
        return {"apgd-ce": aa.apgd.n_restarts, "apgd-dlr": aa.apgd.n_restarts,
                "apgd-t": aa.apgd_targeted.n_target_classes * aa.apgd_targeted.n_restarts,
                "fab": aa.fab.n_restarts, "fab-t": aa.fab.n_target_classes,
                "square": aa.square.n_restarts}.get(attack, 1)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if (m := re.match(r"initial accuracy: ([\d.]+)%", msg)) or \
                (m := re.match(r"robust accuracy after \S+: ([\d.]+)%", msg)):
            self.robust = round(float(m.group(1)) * self.n / 100)
            if self.stage is not None and msg.startswith("robust"):
                self.stage.close(stats={"robust": f"{m.group(1)}%"})
                self.stage = None
        elif m := re.match(r"running (\S+)", msg):
            total = math.ceil(self.robust / self.batch_size) * self._runs_per_batch(m.group(1))
            self.stage = scoped(total, m.group(1), unit="run", items_unit="pt")
            self.stage.set_stats({"robust points": self.robust})

    def run_done(self, points: int) -> None:
        if self.stage is not None:
            self.stage.update(1, items=points)


@contextlib.contextmanager
def _stage_progress(aa: Any, n: int, batch_size: int) -> Iterator[None]:
    logger = logging.getLogger("auto-attack")
    handler = _StageProgress(aa, n, batch_size)
    for sub in (aa.apgd, aa.apgd_targeted, aa.fab, aa.square):
        run = sub.attack_single_run

        def counted(x: Any, *args: Any, _run: Any = run, **kwargs: Any) -> Any:
            out = _run(x, *args, **kwargs)
            handler.run_done(x.shape[0])
            return out

        sub.attack_single_run = counted  # this AutoAttack object only
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its messages are ours to show (as progress), not the root logger's
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        if handler.stage is not None:
            handler.stage.close()


def autoattack_apgd(eps: float, num_classes: int = 10, batch_size: int = 500) -> EvalAttack:
    """APGD-CE + APGD-T of AutoAttack standard (reference implementation, same settings and seed)."""
    attack = ReferenceAutoAttack(eps, version="custom", num_classes=num_classes, batch_size=batch_size,
                                 attacks_to_run=("apgd-ce", "apgd-t"))
    attack.name = "autoattack_apgd"
    return attack


def _pgd_factory(name: str, steps: int, step_of_eps: Callable[[float], float], label: str) -> Callable[..., EvalAttack]:
    def make(eps: float, steps: int = steps, step_size: float | None = None) -> EvalAttack:
        alpha = step_size if step_size is not None else step_of_eps(eps)
        return TorchattacksAttack(name, f"PGD-{steps} ({label}{format_eps(alpha)})", eps,
                                  lambda m: _torchattacks().PGD(m, eps=eps, alpha=alpha, steps=steps,
                                                             random_start=True))
    make.__doc__ = f"PGD-{steps}, uniform random start, step {label or ''}(torchattacks.PGD)"
    return make


def fgsm(eps: float) -> EvalAttack:
    """FGSM, one step of eps, no random start (torchattacks.FGSM)."""
    return TorchattacksAttack("fgsm", "FGSM", eps, lambda m: _torchattacks().FGSM(m, eps=eps))


def autoattack_fast(eps: float, num_classes: int = 10) -> EvalAttack:
    """torchattacks' AutoAttack standard (10 iterations per attack; quick checks only)."""
    return TorchattacksAttack("autoattack_fast", "AutoAttack (torchattacks, fast)", eps,
                              lambda m: _torchattacks().AutoAttack(m, norm="Linf", eps=eps, n_classes=num_classes,
                                                                seed=0))


def apgd_ce(eps: float, steps: int = 100) -> EvalAttack:
    """APGD-CE (torchattacks), 1 restart."""
    return TorchattacksAttack("apgd_ce", f"APGD-CE ({steps})", eps,
                              lambda m: _torchattacks().APGD(m, norm="Linf", eps=eps, steps=steps, loss="ce",
                                                          seed=0))


@hookimpl
def rd_register_eval_attacks(registry):
    registry.register(Clean, name="clean", help="no attack")
    registry.register(fgsm, name="fgsm")
    registry.register(_pgd_factory("pgd20", 20, lambda e: e / 4, "step eps/4 = "), name="pgd20",
                      help="PGD-20, step eps/4 (2/255 at 8/255), uniform start (torchattacks)")
    registry.register(_pgd_factory("pgd20_trades", 20, lambda e: 0.003 * e / (8 / 255), "step "),
                      name="pgd20_trades", help="PGD-20, step 0.003 at 8/255 (TRADES' eval), uniform start")
    registry.register(_pgd_factory("pgd10", 10, lambda e: e / 4, "step eps/4 = "), name="pgd10",
                      help="PGD-10, step eps/4, uniform start (AdaAD's selection metric)")
    registry.register(CWInf, name="cw_inf", help="CW margin loss, kappa 50, 30 steps of eps/4")
    registry.register(ReferenceAutoAttack, name="autoattack", help="AutoAttack standard, reference (pyautoattack)")
    registry.register(autoattack_apgd, name="autoattack_apgd",
                      help="APGD-CE + APGD-T of AutoAttack standard, reference (pyautoattack)")
    registry.register(autoattack_fast, name="autoattack_fast")
    registry.register(apgd_ce, name="apgd_ce")
