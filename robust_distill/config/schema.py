"""The configuration's schema: the sections as frozen dataclasses (:class:`Config`, :class:`DataConfig`, ...),
the typed conversion of plain YAML data into them (every problem with its key path), and the way back to plain
data (:func:`config_to_dict`, :func:`plain_data`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from robust_distill.core.components import Part
from robust_distill.core.threat import ThreatModel, parse_fraction

SCHEMA_VERSION = 1


#: ``optim.compile`` values besides true/false: ``torch.compile`` modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class DataConfig:
    """``data:``, the dataset and how it is batched.

    :param dataset: a registered dataset (``cifar10``, ``cifar100``, ``fashion_mnist``, ``image_folder``,
        ``tiny_imagenet``, ``imagenet``, ``synthetic``, or a plugin's).
    :param root: where the dataset's files are (``null``: the dataset's default).
    :param options: keyword arguments of the dataset's ``load`` and ``info`` (``{n_train: 96}`` for ``synthetic``).
    :param batch_size: the global training batch (divided among processes under torchrun).
    :param eval_batch_size: the batch of evaluation attacks.
    :param augment: the random crop and flip the dataset asks for (``false``: none).
    :param label_noise: symmetric label noise on the training images (after ``train_subset``): that fraction of
        their labels, chosen by ``split_seed``, is replaced by another class; validation and test stay clean.
        Noisy labels make robust overfitting appear on small data (Dong et al. 2022).
    """
    dataset: str = "cifar10"
    root: Union[str, None] = None
    options: dict[str, Any] = field(default_factory=dict)
    val_size: int = 5000  # held out of the training split for model selection; 0 disables
    split_seed: int = 0  # the validation split is the same for every run seed
    train_subset: Union[int, None] = None  # train on the first N training images (after the split)
    label_noise: float = 0.0  # fraction of the training labels replaced by another class (fixed by split_seed)
    batch_size: int = 128
    eval_batch_size: int = 256
    augment: bool = True
    on_device: Union[bool, Literal["auto"]] = "auto"  # keep the in-memory dataset on the GPU (auto: if it fits)
    workers: Union[int, None] = None  # DataLoader processes of streamed datasets; null: min(4, cores)
    prefetch_factor: int = 2  # batches each worker prepares ahead (streamed datasets)


@dataclass(frozen=True)
class OptimConfig:
    """``optim:``, the student's optimiser (SGD) and learning-rate schedule.

    :param epochs: training epochs.
    :param lr: the initial learning rate.
    :param momentum: SGD momentum.
    :param weight_decay: SGD weight decay.
    :param nesterov: Nesterov momentum.
    :param schedule: a registered lr schedule (``multistep``, ``cosine``, ``constant``, ...) with its options.
    """
    epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: Part = Part("multistep", {"milestones": [100, 150], "gamma": 0.1})
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of training (robust_distill.core.precision)
    compile: Union[bool, Literal[COMPILE_MODES]] = False  # torch.compile the student and teacher forwards
    fold_bn: Union[bool, Literal["auto"]] = "auto"  # fold BatchNorm into convolutions (robust_distill.engine.fastpath)
    log_every: int = 50  # steps between reads of the per-step diagnostics (one host sync each) on CUDA
    amp: bool = False  # deprecated alias of precision: fp16
    clip_grad_norm: Union[float, None] = None  # clip the student's gradient to this L2 norm before each step


@dataclass(frozen=True)
class EvalConfig:
    """``eval:``, the evaluation after every ``every`` epochs and after training.

    :param attacks: evaluation attacks run every ``every`` epochs on ``split`` (``clean``, ``pgd20``, ...).
    :param final_n_examples: test images of the final evaluation (``null``: the whole test split).
    """
    every: int = 1  # evaluate every N epochs (and always after the last one)
    split: Literal["val", "test"] = "val"  # model selection on a held-out split; "test" as the papers
    n_examples: Union[int, None] = 1000  # None: the whole split
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd20"])
    select: str = "pgd20"  # metric that picks the best checkpoint
    eps: Union[float, None] = None  # evaluation radius; default: threat.eps
    final_attacks: list[str] = field(default_factory=list)  # on the test split after training
    final_n_examples: Union[int, None] = 1000
    train_records: int = 0  # per-sample PGD correctness on the first N training images, each eval
    precision: Literal["fp32", "bf16"] = "fp32"  # evaluation attacks in fp32 unless asked (comparable numbers)
    concurrency: Union[int, Literal["auto"]] = "auto"  # AutoAttack chunks attacked at once (auto: several on CUDA)


@dataclass(frozen=True)
class SWAConfig:
    """``swa:``, stochastic weight averaging of the student (``output_dir/swa.pt``)."""
    start: Union[float, None] = None  # SWA of the student from this epoch (0-based; < 1: a fraction of the run;


@dataclass(frozen=True)
class Config:
    """A resolved configuration (one YAML file per experiment).

    :param method: a registered method; its parts and paper defaults come with it.
    :param student: the student network, ``<source>:<name>`` (``timm:resnet18_cifar``) with options.
    :param teachers: teacher role (``robust``, ``natural``, ...) -> ``<source>:<name>`` with options.
    :param version: the config schema's version.
    :param seed: every random draw of the run derives from it (and the epoch).
    :param device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    :param output_dir: the run's folder (config, metrics, checkpoints; resumed from its ``last.pt``).
    :param inner_attack: the inner maximisation (default: the method's) and its options.
    :param outer_loss: the outer loss (default: the method's) and its options.
    :param teacher_updater: how teachers change during training (``frozen``: never).
    """
    method: str
    student: Part
    teachers: dict[str, Part] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/run"
    data: DataConfig = DataConfig()
    threat: ThreatModel = ThreatModel()
    inner_attack: Part = Part("")
    outer_loss: Part = Part("")
    teacher_updater: Part = Part("frozen")
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    swa: SWAConfig = SWAConfig()
    logging: list[Part] = field(default_factory=list)  # experiment trackers: [tensorboard, wandb] (rd_register_loggers)
    channels_last: bool = False  # NHWC memory format (faster convolutions on CPU and recent GPUs)
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    save_epochs: list[int] = field(default_factory=list)  # also keep the student of these epochs (epoch_N.pt)

    @property
    def eval_threat(self) -> ThreatModel:
        """The evaluation's L-inf ball: radius ``eval.eps``, else ``threat.eps`` (the starting radius when
        ``threat.eps_end`` grows it). Only the ball is used: each evaluation attack has its own steps."""
        return ThreatModel(eps=self.eval.eps if self.eval.eps is not None else self.threat.eps)


def stored_eval_eps(stored: Mapping[str, Any] | None, default: Any = None) -> Any:
    """:attr:`Config.eval_threat`'s rule on a config stored as plain data (a checkpoint's ``config``): its
    ``eval.eps``, else its ``threat.eps``, else ``default`` (as written there: a number or ``"8/255"``)."""
    stored = stored or {}
    eps = (stored.get("eval") or {}).get("eps")
    return eps if eps is not None else (stored.get("threat") or {}).get("eps", default)


_EPS_FIELDS = {"eps", "step_size", "eps_end"}


#: integers are 64-bit in torch: every integer of a config fits one
INT_LIMIT = 2**63


#: seeds seed Python's, numpy's (32-bit) and torch's generators
SEED_RANGE = (0, 2**32 - 1)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for a in args:
            if a is type(None):
                continue
            sub: list[str] = []
            out = convert(value, a, path, sub)
            if not sub:
                return out
            errors.extend(sub)
        choices = [a for a in args if a is not type(None)]
        if len(choices) == 1 and errors:  # `float | None`: the number's own problem, which names its range
            problems.extend(errors)
        else:
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in args:
            problems.append(f"{path}: must be one of {', '.join(repr(a) for a in args)}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, path, problems)
    if origin in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return []
        return [convert(v, args[0] if args else Any, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        return {k: convert(v, args[1] if args else Any, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        elif not -INT_LIMIT <= value < INT_LIMIT:
            problems.append(f"{path}: {value} does not fit a 64-bit integer (valid: {-INT_LIMIT} to {INT_LIMIT - 1}).")
        return value
    if tp is float:
        return _number(value, path, problems)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _number(value: Any, path: str, problems: list[str]) -> float | None:
    """A finite float from ``0.1``, ``8/255`` or ``"1e-3"``; else a problem naming ``path`` (None)."""
    try:
        number = parse_fraction(value, what=path)
    except ValueError as exc:
        problems.append(str(exc))
        return None
    if not math.isfinite(number):
        problems.append(f"{path}: must be a finite number, got {value!r}.")
        return None
    return number


def check_finite(value: Any, path: str, problems: list[str]) -> None:
    """A problem for every NaN or infinite float inside ``value`` (options without a declared type)."""
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: must be a finite number, got {value!r}.")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}", problems)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]", problems)


def build_section(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        problems.append(f"{path or 'config'}: expected a mapping, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}: unknown key.{hint} Valid keys here: {', '.join(fields)}.")
            continue
        if cls is ThreatModel and key in _EPS_FIELDS and value is not None:
            number = _number(value, where, problems)
            if number is not None:
                kwargs[key] = number
            continue
        kwargs[key] = convert(value, hints[key], where, problems)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    for n in missing:
        if not any(p.startswith(f"{path}.{n}" if path else n) for p in problems):
            problems.append(f"{path + '.' if path else ''}{n}: required key is missing.")
    if missing or any(v is None and hints[k] in (int, float, str, bool) for k, v in kwargs.items()):
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{path or 'config'}: {exc}")
        return None


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a config dataclass that has one, nested sections as dicts."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = value
    return out


def plain_data(obj: Any) -> Any:
    """Containers of str/int/float/bool/None only, tuples as lists: a config as it reads back from YAML or a
    checkpoint (safe for ``weights_only`` loading and YAML)."""
    if dataclasses.is_dataclass(obj):
        return plain_data(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    return obj


def plain_value(value: Any) -> Any:
    """``value`` as YAML can write it safely (an object that is not plain data as its repr)."""
    plain = plain_data(value)
    try:
        yaml.safe_dump(plain)
    except yaml.YAMLError:
        return repr(value)
    return plain


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (for YAML/JSON and checkpoints)."""
    return dataclasses.asdict(cfg)
