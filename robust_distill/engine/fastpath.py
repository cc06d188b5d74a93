"""Fast paths of the training step that keep its numbers: weights held in the autocast dtype, and BatchNorm
folded into the convolution before it.

* :class:`CastWeights`: under ``torch.autocast``, a convolution or linear layer casts its fp32 weight and
  bias to the autocast dtype at *every* call, unless the weight is a leaf that requires grad (autocast's
  cache holds only those). A frozen teacher (11 forwards per AdaAD step) and the student during the inner
  attack (parameters frozen there) are re-cast at every forward. :class:`CastWeights` holds copies in the
  autocast dtype and swaps them in for the duration of a context: the copy is the same rounding of the same
  fp32 values, so the results are bitwise those of autocast's own cast.
* :class:`BNFold`: ``BatchNorm(conv(x))`` of an eval-mode BatchNorm is ``conv'(x)`` with
  ``w' = w * g / sqrt(v + eps)`` and ``b' = (b - m) g / sqrt(v + eps) + beta`` (per output channel): exact in
  real numbers, equal up to rounding in floating point. The pairs are found on the model's ``torch.fx``
  graph (:func:`conv_bn_pairs`), so only a BatchNorm whose sole input is a convolution whose output nothing
  else reads is folded; a model that does not trace is left as it is.
* :func:`constant_teachers`: the teachers that never change during a run (the teacher updater says which:
  :meth:`~robust_distill.core.components.TeacherUpdater.constant_teachers`). Only these are cast once for the
  whole run (and folded with ``optim.fold_bn``); a trained teacher is cast per step with the student.

``optim.fold_bn`` (:func:`fold_enabled`): ``auto`` (default) folds on CUDA under bf16/fp16 only, where
rounding differs from fp32 anyway, so fp32 results on CPU (the fidelity tests against the official codes at
1e-12) never change; ``true`` folds everywhere, ``false`` never. Folding applies to the constant teachers
(once, in place: their BatchNorm becomes ``nn.Identity``) and to the student during an eval-mode inner attack
(per step, with the current weights and running statistics, restored after the attack).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["CastWeights", "BNFold", "AttackWeights", "conv_bn_pairs", "constant_teachers", "fold_enabled",
           "castable_modules", "check_fold", "teacher_fast_path", "fused_conv_bn"]

#: layers whose weight autocast casts (exact types: a subclass may use its weight otherwise, e.g. StdConv2d)
CAST_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_FOLD_TYPES: dict[type[nn.Module], type[nn.Module]] = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d,
                                                       nn.Conv3d: nn.BatchNorm3d}


def fold_enabled(option: bool | str, device: torch.device, precision: str) -> bool:
    """``optim.fold_bn`` -> fold or not: ``auto`` is on for CUDA with bf16/fp16 only."""
    if option == "auto":
        return device.type == "cuda" and precision in ("bf16", "fp16")
    return bool(option)


def constant_teachers(updater: Any, teachers: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The teachers the updater declares constant for the whole run, except a module that also serves a role
    that is not constant (a shared object is only as constant as its least constant role)."""
    roles = frozenset(updater.constant_teachers(frozenset(teachers)))
    changing = {id(m) for r, m in teachers.items() if r not in roles}
    return {r: m for r, m in teachers.items() if r in roles and id(m) not in changing}


def castable_modules(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Every submodule (once) whose weight autocast casts: :data:`CAST_TYPES`, exactly."""
    seen: dict[int, nn.Module] = {}
    for module in modules:
        for m in module.modules():
            if type(m) in CAST_TYPES and isinstance(m.weight, torch.Tensor):
                seen.setdefault(id(m), m)
    return list(seen.values())


class CastWeights:
    """Conv/linear weights and biases of ``modules`` swapped for copies in ``dtype`` while :meth:`swapped` is
    entered; the fp32 parameters are put back on exit (checkpoints and optimizers never see the copies).

    The copies are allocated once (fixed addresses, as CUDA graphs need). ``swapped(refresh=True)`` re-casts
    the parameters the modules hold at that moment (a student whose weights changed since the last step, or
    weights swapped in by a :class:`BNFold` entered before); ``refresh=False`` uses the copies of the last
    refresh (a constant teacher: cast once for the whole run).
    """

    def __init__(self, modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.modules = castable_modules(modules)
        self._copies: dict[tuple[int, str], nn.Parameter] = {}

    def _slots(self) -> Iterator[tuple[nn.Module, str]]:
        for m in self.modules:
            for name in ("weight", "bias"):
                if m._parameters.get(name) is not None:
                    yield m, name

    def refresh(self) -> None:
        """Cast the parameters the modules hold now into the copies (one foreach copy)."""
        sources, copies = [], []
        for m, name in self._slots():
            src = m._parameters[name].detach()
            key = (id(m), name)
            copy = self._copies.get(key)
            if copy is None or copy.shape != src.shape or copy.stride() != src.stride():
                copy = self._copies[key] = nn.Parameter(torch.empty_like(src, dtype=self.dtype), requires_grad=False)
            sources.append(src)
            copies.append(copy)
        if copies:
            with torch.no_grad():
                torch._foreach_copy_(copies, sources)

    @contextmanager
    def swapped(self, refresh: bool = True) -> Iterator[None]:
        if refresh or not self._copies:
            self.refresh()
        saved = []
        for m, name in self._slots():
            saved.append((m, name, m._parameters[name]))
            m._parameters[name] = self._copies[(id(m), name)]
        try:
            yield
        finally:
            for m, name, param in reversed(saved):
                m._parameters[name] = param


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` submodule names such that ``bn``'s only input is ``conv``'s output, nothing else reads
    that output, each module is called once and no code reads their parameters directly, on ``model``'s
    ``torch.fx`` graph; ``[]`` for a model that does not trace (input-dependent control flow)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # tracing fails in many ways (data-dependent branches, unsupported ops)
        return []
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    attrs = [str(n.target) for n in graph.nodes if n.op == "get_attr"]

    def plain(name: str) -> bool:
        m = modules[name]
        read = any(a == name or a.startswith(name + ".") for a in attrs)
        return calls[name] == 1 and not read and not (m._forward_hooks or m._forward_pre_hooks)

    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv, bn = modules[str(src.target)], modules[str(node.target)]
        if _FOLD_TYPES.get(type(conv)) is type(bn) and plain(str(src.target)) and plain(str(node.target)):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fused_conv_bn(pairs: list[tuple[nn.Module, nn.Module]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(w', b')`` of each (convolution, eval-mode BatchNorm): ``s = g / sqrt(v + eps)``, ``w' = w s`` (per output
    channel, in the weight's memory format), ``b' = (b - m) s + beta``. The per-channel vectors of all pairs are
    computed with foreach operations: a few kernel launches for a whole network, not eight per pair."""
    if not pairs:
        return []
    with torch.no_grad():
        bns = [bn for _, bn in pairs]
        scale = torch._foreach_add([bn.running_var for bn in bns], [float(bn.eps) for bn in bns])
        torch._foreach_rsqrt_(scale)
        torch._foreach_mul_(scale, [bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
                                    for bn in bns])
        shift = torch._foreach_sub([conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
                                    for conv, bn in pairs], [bn.running_mean for bn in bns])
        torch._foreach_mul_(shift, scale)
        torch._foreach_add_(shift, [bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
                                    for bn in bns])
        weights = [conv.weight.detach() * s.view(-1, *[1] * (conv.weight.dim() - 1)).to(conv.weight.dtype)
                   for (conv, _), s in zip(pairs, scale, strict=True)]
    return list(zip(weights, [b.to(w.dtype) for w, b in zip(weights, shift, strict=True)], strict=True))


class BNFold:
    """Eval-mode BatchNorm folded into the convolution before it (:func:`conv_bn_pairs` of ``model``).

    :meth:`folded` swaps in ``conv'`` (weights computed from the current conv weights and BN statistics) and
    ``nn.Identity`` for the BN, and restores both on exit (the student during an eval-mode attack);
    :meth:`apply` does it for good (a constant teacher). Pairs whose BN is in train mode or keeps no running
    statistics are skipped at that moment.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.pairs = conv_bn_pairs(model)
        self._modules = dict(model.named_modules())
        self._held: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _parent(self, name: str) -> tuple[nn.Module, str]:
        parent, _, child = name.rpartition(".")
        return self._modules[parent], child

    def _fold(self) -> list[tuple[nn.Module, dict[str, Any], nn.Module, str, nn.Module]]:
        pairs = [(c, b) for c, b in self.pairs if not self._modules[b].training
                 and isinstance(self._modules[b], nn.modules.batchnorm._BatchNorm)
                 and self._modules[b].running_mean is not None]
        fused = fused_conv_bn([(self._modules[c], self._modules[b]) for c, b in pairs])
        new, held = [], []
        for (conv_name, _), (w, b) in zip(pairs, fused, strict=True):
            pair = self._held.get(conv_name)
            if pair is None or pair[0].shape != w.shape or pair[0].stride() != w.stride():
                self._held[conv_name] = (nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False))
            else:  # the same tensors at every attack (fixed addresses for CUDA graphs): one foreach copy below
                new += [w, b]
                held += list(pair)
        if held:
            with torch.no_grad():
                torch._foreach_copy_(held, new)
        undo = []
        for conv_name, bn_name in pairs:
            conv, bn = self._modules[conv_name], self._modules[bn_name]
            undo.append((conv, {"weight": conv._parameters["weight"], "bias": conv._parameters.get("bias")},
                         *self._parent(bn_name), bn))
            conv._parameters["weight"], conv._parameters["bias"] = self._held[conv_name]
            parent, child = self._parent(bn_name)
            parent._modules[child] = nn.Identity()
        return undo

    @staticmethod
    def _unfold(undo: list[tuple[nn.Module, dict[str, Any], nn.Module, str, nn.Module]]) -> None:
        for conv, params, parent, child, bn in reversed(undo):
            conv._parameters.update(params)
            parent._modules[child] = bn

    @contextmanager
    def folded(self) -> Iterator[None]:
        undo = self._fold()
        try:
            yield
        finally:
            self._unfold(undo)

    def apply(self) -> int:
        """Fold for good; returns the number of BatchNorms removed."""
        return len(self._fold())


class AttackWeights:
    """The frozen models of an inner attack (the student, the teachers that change), per attack: eval-mode
    BatchNorms folded (``fold``) and conv/linear weights cast to ``dtype`` (``None``: fp32), from the weights
    they hold when the attack starts; everything is restored when it ends. Entered by
    :meth:`robust_distill.core.attacks.InnerPGD.attack_context` after the student is put in its attack mode (a
    train-mode BatchNorm, as in ARD's attack, is not folded)."""

    def __init__(self, models: list[nn.Module], dtype: torch.dtype | None, *, fold: bool) -> None:
        self.models = models
        self.folds = [f for f in (BNFold(m) for m in models) if len(f)] if fold else []
        self.cast = CastWeights(models, dtype) if dtype is not None else None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with ExitStack() as stack:
            for fold in self.folds:
                stack.enter_context(fold.folded())
            if self.cast is not None:
                stack.enter_context(self.cast.swapped(refresh=True))
            yield


def check_fold(model: nn.Module, fold: BNFold, example: torch.Tensor, rtol: float = 1e-4) -> None:
    """Raise if folding changes ``model(example)`` beyond rounding (a structure :func:`conv_bn_pairs` got
    wrong would show here): the outputs of the folded and the plain model in fp32, compared at ``rtol`` of
    their largest magnitude."""
    with torch.no_grad():
        plain = model(example).float()
        with fold.folded():
            out = model(example).float()
    scale = plain.abs().max().clamp_min(1e-6)
    if not ((out - plain).abs().max() <= rtol * scale):
        raise RuntimeError(f"Folding BatchNorm into the convolutions of {type(model).__name__} changes its outputs "
                           f"by {((out - plain).abs().max() / scale).item():.2g} relative (pairs {fold.pairs}). "
                           "Set optim.fold_bn: false and report the model.")


def teacher_fast_path(teachers: Mapping[str, nn.Module], constant: Collection[str], *, dtype: torch.dtype | None,
                      fold: bool, example: torch.Tensor) -> tuple[CastWeights | None, dict[str, int]]:
    """Fold the BatchNorms of the constant teachers (``fold``: checked on ``example``) and hold their weights in
    ``dtype`` (the autocast dtype; ``None`` for fp32). Returns the cast (for the engine to enter around its
    steps) and, per constant teacher, the number of BatchNorms folded."""
    folded: dict[str, int] = {}
    done: set[int] = set()
    for role in constant:
        model = teachers[role]
        if id(model) in done:
            continue
        done.add(id(model))
        folding = BNFold(model) if fold else None
        if folding is not None and len(folding):
            check_fold(model, folding, example)
        folded[role] = folding.apply() if folding is not None else 0
    models = [teachers[r] for r in constant]
    cast = CastWeights(models, dtype) if dtype is not None and models else None
    if cast is not None:
        cast.refresh()
    return cast, folded
