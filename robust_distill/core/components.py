"""The parts a plugin provides, as small base classes and data types.

Hooks (``hookspecs.py``) fill registries with these at start-up; the engine then calls the plain
objects. A method is a :class:`Method`: the names of its parts plus its paper's defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from robust_distill.core.context import RunContext
    from robust_distill.core.step import Step
    from robust_distill.data.streaming import ImageList, ImageTransform

__all__ = [
    "Stateful", "DatasetInfo", "DataBundle", "StreamedBundle", "TeacherSource", "StudentSource", "InnerAttack",
    "OuterLoss", "TeacherUpdater", "EvalAttack", "Method", "Part", "split_spec", "LRSchedule", "training_defaults",
    "epochs_of",
]


class Stateful:
    """Parts that carry state across steps (adaptive weights, temperatures, trained teachers) save it here.

    The checkpoint stores ``state_dict()`` of every stateful part, so a resumed run continues exactly. Most
    parts only declare ``state_attributes``: the names of attributes to save, each a number, string, tensor,
    container of them, or an object with ``state_dict``/``load_state_dict`` (a module, an optimizer, another
    ``Stateful``: saved through its own state dict, restored in place). Override both methods for anything
    else. Values must load with ``torch.load(weights_only=True)``.
    """

    state_attributes: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume: the ``state_attributes`` (modules and optimizers as their state dicts)."""
        out: dict[str, Any] = {}
        for name in self.state_attributes:
            value = getattr(self, name)
            if isinstance(value, nn.Module):
                value = {k: v.detach().clone() for k, v in value.state_dict().items()}
            elif hasattr(value, "state_dict"):
                value = value.state_dict()
            out[name] = value
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a key this part does not save is an error."""
        if not state:
            return
        unknown = sorted(set(state) - set(self.state_attributes))
        if unknown:
            raise ValueError(f"{type(self).__name__} does not know the checkpoint's state {unknown} "
                             f"(it saves: {', '.join(self.state_attributes) or 'nothing'}).")
        for name in self.state_attributes:
            current = getattr(self, name)
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(state[name])
            else:
                setattr(self, name, state[name])


@dataclass(frozen=True)
class DatasetInfo:
    """What models need to know about a dataset."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...] = ()
    preprocessing: str | None = None  # evaluation transform of image datasets, RobustBench's name for it
    train_size: int | None = None  # images in the training split, if known without loading (checks data.val_size)


@dataclass
class DataBundle:
    """A dataset held in memory: uint8 (or float in [0, 1]) NCHW images and int64 labels.

    Augmentation is applied batch-wise on the training device by the engine (random crop with
    ``crop_padding`` and horizontal ``flip``), which is much faster than per-sample PIL transforms.
    """

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    crop_padding: int = 4
    flip: bool = True


@dataclass
class StreamedBundle:
    """A dataset read from image files while training (:mod:`robust_distill.data.streaming`).

    ``train`` and ``test`` list the files and labels; ``transform`` turns a decoded image into a uint8
    tensor, with per-sample augmentation for training (``CropFlip``, ``RandomResizedCropFlip``). The
    engine decodes in ``DataLoader`` workers (``data.workers``) and holds out the validation split from
    ``train`` as it does in memory.
    """

    info: DatasetInfo
    train: ImageList
    test: ImageList
    transform: ImageTransform


class TeacherSource:
    """Resolves ``<source>:<name>`` teacher specs into frozen models that take [0, 1] inputs."""

    def load(self, name: str, *, dataset: DatasetInfo, **options: Any) -> nn.Module:
        """Return the teacher in ``eval()`` mode, on CPU, outputting logits (or log-probabilities); a new module
        at every call (the engine may fold its BatchNorms in place: :mod:`robust_distill.engine.fastpath`)."""
        raise NotImplementedError

    def check(self, name: str, *, dataset: DatasetInfo, **options: Any) -> None:
        """Raise ``ValueError`` (listing valid names) or ``FileNotFoundError`` if ``name``/``options`` cannot
        work for ``dataset``; called before any work, so no loading (reading a file memory-mapped, building on
        the ``meta`` device and :func:`robust_distill.core.preflight.check_input_shape` are cheap enough)."""

    def names(self, dataset: DatasetInfo | None = None) -> list[str] | None:
        """Known names (for ``robust-distill plugins``), or None if the space is open."""
        return None


class StudentSource:
    """Builds freshly initialised students from ``<source>:<name>`` specs."""

    def build(self, name: str, *, input_shape: tuple[int, int, int], num_classes: int,
              **options: Any) -> nn.Module:
        """A freshly initialised student for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs."""
        raise NotImplementedError

    def check(self, name: str, **options: Any) -> None:
        """Raise ``ValueError`` (listing valid names) if ``name`` is unknown."""

    def names(self) -> list[str] | None:
        """Known names (for ``robust-distill plugins``), or None if the space is open."""
        return None


class InnerAttack(Stateful):
    """The inner maximisation: crafts the step's training inputs. Returns ``x_adv`` and nothing else.

    Subclasses normally implement :meth:`objective` and leave ``__call__`` to
    :func:`robust_distill.core.attacks.inner_pgd` (the one PGD loop).
    """

    def __call__(self, step: Step) -> Tensor:
        raise NotImplementedError


class OuterLoss(Stateful):
    """The student's objective on a step whose ``x_adv`` is set. Returns a scalar tensor.

    Per step the engine calls :meth:`before_attack`, then the inner attack, then ``loss(step)``; per epoch,
    :meth:`end_epoch`.
    """

    def before_attack(self, step: Step) -> None:
        """Work that must happen *before* the inner attack of every step (default: none).

        Runs after the teacher updater's ``before_step``, with the student in train mode and under the step's
        autocast. The use: an official code that runs a train-mode forward before its eval-mode attack, so the
        attack sees BN running statistics already updated with this batch (CIARD's ``S(x)``). Outputs asked
        for here through ``step.student_logits(...)`` keep their graph and are cached: ``__call__`` reuses
        them, so the order changes and nothing is computed twice.
        """

    def end_epoch(self, run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> None:
        """After the epoch's evaluation, right after the teacher updater's ``end_epoch`` (default: nothing).

        ``metrics`` is the epoch's row as the teacher updater gets it (read-only; the same on every process):
        after an evaluation it holds ``<eval.split>_<attack>`` accuracies and ``is_best``. The use: a loss
        weight adapted to validation metrics (CIARD's paper variant); state changed here goes in
        ``state_attributes``, so the checkpoint written after it resumes exactly.
        """

    def __call__(self, step: Step) -> Tensor:
        raise NotImplementedError


class TeacherUpdater(Stateful):
    """How the teachers change during training. The default (``frozen``) never changes them.

    An updater that trains a network subclasses :class:`robust_distill.engine.trained.TrainedTeacher` and holds it in
    a :class:`~robust_distill.engine.trained.TrainedModel` (optimizer, lr, DDP, AMP and resume state in one place).

    :cvar grad_teachers: teacher roles whose step outputs must keep their graph (they are trained).
    """

    grad_teachers: frozenset[str] = frozenset()
    provides: tuple[str, ...] = ()  # teacher roles this updater creates itself (self-distillation)

    def constant_teachers(self, roles: frozenset[str]) -> frozenset[str]:
        """The roles among ``roles`` (the configured teachers) whose weights and buffers never change during the
        run: the engine may then hold them in the training precision and fold their BatchNorms
        (:mod:`robust_distill.engine.fastpath`), for good. Default: none (safe for any updater); an updater that
        leaves a teacher untouched says so here."""
        return frozenset()

    def setup(self, run: RunContext) -> None:
        """Once per run, before the first epoch; on resume before :meth:`load_state_dict` (which restores the
        state of what ``setup`` created): may create or wrap teachers."""

    def before_step(self, step: Step) -> None:
        """Before the inner attack of every step (e.g. set a teacher's mode)."""

    def after_step(self, step: Step) -> None:
        """After the student's optimizer step."""

    def end_epoch(self, run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> None:
        """After the epoch's evaluation; ``metrics["is_best"]`` says if the student improved."""


class EvalAttack:
    """An evaluation attack: ``attack(model, x, y) -> x_adv`` with ``model`` in eval mode."""

    name: str = ""
    label: str = ""  # human-readable, e.g. "PGD-20 (step 2/255)"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


LRSchedule = Callable[[float], float]
"""``schedule(epoch) -> multiplier`` of the base learning rate; ``epoch`` is fractional (per step)."""


@dataclass(frozen=True)
class Part:
    """A configured component: registry ``key`` plus constructor ``kwargs``.

    What a :class:`Method` names and what a config's ``student``, ``teachers.<role>``, ``inner_attack``,
    ``outer_loss``, ``teacher_updater`` and ``optim.schedule`` hold. Model keys carry their source as a prefix
    (``timm:resnet18_cifar``, ``checkpoint:runs/x/best.pt``): see :func:`split_spec`.
    """

    key: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"key": ..., "kwargs": {...}}``, as a config file writes the part."""
        return {"key": self.key, "kwargs": dict(self.kwargs)}


def split_spec(spec: str) -> tuple[str, str]:
    """``"robustbench:Chen2021LTD_WRN34_10"`` -> ``("robustbench", "Chen2021LTD_WRN34_10")``; no prefix:
    ``("", spec)``."""
    source, sep, name = spec.partition(":")
    return (source, name) if sep else ("", spec)


def epochs_of(value: float, epochs: int) -> float:
    """An epoch count given absolutely, or as a fraction of a run of ``epochs`` epochs when below 1.

    Lets epoch-based options of the papers (milestones, warm-ups, start epochs) scale to short runs.
    """
    return value * epochs if 0 < value < 1 else float(value)


def training_defaults(*, epochs: int, weight_decay: float, milestones: Sequence[float] = (), gamma: float = 0.1,
                      schedule: Part | None = None, lr: float = 0.1, eps: float | None = 8 / 255,
                      step_size: float = 2 / 255, steps: int = 10, **extra: Any) -> dict[str, Any]:
    """A :class:`Method`'s ``defaults``: the official code's SGD and lr schedule, and its threat model.

    ``milestones`` (epochs where the lr is multiplied by ``gamma``) or another ``schedule``; ``eps=None``
    for methods without an inner maximisation; ``extra`` top-level keys (e.g. ``seed``).
    """
    sched = schedule or Part("multistep", {"milestones": list(milestones), "gamma": gamma})
    out: dict[str, Any] = {"optim": {"epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                                     "schedule": sched.as_dict()}}
    if eps is not None:
        out["threat"] = {"eps": eps, "step_size": step_size, "steps": steps}
    return {**out, **extra}


@dataclass(frozen=True)
class Method:
    """A named ARD method: which parts it combines and its paper's defaults.

    :param name: what users type in configs (``method: rslad``).
    :param inner_attack: inner maximisation (registry ``inner_attacks``).
    :param outer_loss: outer minimisation (registry ``outer_losses``).
    :param teacher_updater: how teachers change (registry ``teacher_updaters``).
    :param teachers: teacher roles the user must configure (``("robust",)``; ``()`` for PGD-AT).
    :param defaults: config defaults of the paper/official code (``{"optim": {"epochs": 200}}``);
        the user's config overrides them key by key.
    :param reference: paper, equation and official code path.
    """

    name: str
    inner_attack: Part
    outer_loss: Part
    teacher_updater: Part = Part("frozen")
    teachers: tuple[str, ...] = ("robust",)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    reference: str = ""
