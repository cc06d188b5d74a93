"""The Python API: train, evaluate and load models from a notebook or a script of your own.

::

    import robust_distill as rd

    summary = rd.train("configs/rslad.yaml", overrides={"optim.epochs": 5, "output_dir": "runs/rslad"})
    model = rd.load_model("runs/rslad")                  # its best.pt, in eval mode, inputs in [0, 1]
    ev = rd.evaluate(model, dataset="cifar10", attacks=["clean", "pgd20"], n_examples=1000)
    ev.accuracy                                         # {"clean": 0.83, "pgd20": 0.51}
    ev.correct["pgd20"]                                 # per example, in the order of ev.indices
    rd.list_methods("*ard*")                            # ["ard", "ciard", "mmard", "mtard", ...]

``robust-distill train`` and ``robust-distill eval`` are built on :func:`train` and :func:`evaluate`; errors
are the command line's (:class:`~robust_distill.config.ConfigError` names the key, an unknown name lists the
registered ones).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor, nn

from robust_distill.config import Config, config_to_dict, load_config, plain_data, resolve_config, stored_eval_eps
from robust_distill.core.attacks import model_mode
from robust_distill.core.components import split_spec
from robust_distill.core.manager import get_registries
from robust_distill.core.threat import ThreatModel
from robust_distill.data.memory import TensorEvalSet, dataset_info, to_float
from robust_distill.data.splits import make_splits
from robust_distill.data.streaming import default_workers
from robust_distill.engine.distributed import resolve_device
from robust_distill.engine.evaluation import TransferAttack, evaluate_set, make_eval_attacks
from robust_distill.engine.trainer import train as train_run
from robust_distill.errors import ConfigError, InputError
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill.files.hub import CONFIG, locate_checkpoint, read_hub_config

if TYPE_CHECKING:
    from robust_distill.config import Config
    from robust_distill.core.manager import Registries
    from robust_distill.data.memory import EvalSet
    from robust_distill.engine.evaluation import EvalResult

__all__ = ["train", "evaluate", "load_model", "Evaluation", "registries", "list_methods", "list_attacks",
           "resolve_model"]

ModelSource = Union[nn.Module, str, "os.PathLike[str]"]
"""What :func:`evaluate` takes as a model: a module, or where :func:`load_model` finds one."""


def registries() -> Registries:
    """Every registry (``methods``, ``datasets``, ``eval_attacks``, ``teacher_sources``, ...), filled by the
    installed plugins: ``registries().methods.entry("rslad").obj.reference`` names RSLAD's paper."""
    return get_registries()


def list_methods(pattern: str = "*") -> list[str]:
    """The registered methods' names matching the shell-style ``pattern`` (``"*ard*"``), sorted."""
    return registries().methods.names(pattern)


def list_attacks(pattern: str = "*") -> list[str]:
    """The registered evaluation attacks' names matching ``pattern``, sorted: what ``attacks=`` takes."""
    return registries().eval_attacks.names(pattern)


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


def train(config: Config | Mapping[str, Any] | str | os.PathLike[str], *,
          overrides: Mapping[str, Any] | Sequence[str] | None = None, resume: bool = True) -> dict[str, Any]:
    """Train (or resume) a run; returns its summary, the dict written to ``summary.json``.

    :param config: a YAML file, a config dict as the file would hold it, or a resolved
        :class:`~robust_distill.config.Config`.
    :param overrides: config keys to change, as ``{"optim.epochs": 5, "threat.eps": "8/255"}`` or as the
        command line's ``["optim.epochs=5"]`` (``--set``).
    :param resume: continue from ``output_dir/last.pt`` when it exists (the command line's ``--no-resume`` is
        ``resume=False``).

    The summary holds ``best_epoch``, ``best_value`` (of ``select``), the ``checkpoints`` (``best``, ``last``),
    the validation metrics of the ``best`` and ``last`` epochs, and ``final``: ``eval.final_attacks`` on the
    test split. Raises :class:`~robust_distill.config.ConfigError` listing every problem of the config.
    """
    regs = registries()
    sets = _override_list(overrides)
    if isinstance(config, Config):
        cfg = resolve_config(plain_data(config_to_dict(config)), regs, overrides=sets) if sets else config
    elif isinstance(config, Mapping):
        cfg = resolve_config(config, regs, overrides=sets)
    else:
        cfg = load_config(config, regs, sets)
    return train_run(cfg, regs=regs, resume=resume)


def _override_list(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"optim.epochs": 5}`` -> ``["optim.epochs=5"]``: values as JSON, which the config reads as YAML."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    return list(overrides)


# -------------------------------------------------------------------------------------------------
# Models
# -------------------------------------------------------------------------------------------------


def _model_spec(source: str | os.PathLike[str], which: str) -> str:
    """A run folder -> its ``which`` checkpoint; an exported folder -> ``hf-hub:<folder>``; else unchanged."""
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG).is_file():
            return f"hf-hub:{path}"
        return str(locate_checkpoint(path, which)[0])
    return str(source)


def resolve_model(spec: str, options: dict[str, Any], dataset: str | None, regs: Registries,
                  data_options: dict[str, Any] | None = None,
                  data_root: str | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """A model spec (or a bare checkpoint path) -> (model in eval mode, dataset name, checkpoint or {}).

    A robust-distill checkpoint knows its dataset (and the dataset root and options it was trained with), as
    does an exported folder (``hf-hub:``); other models are taken as CIFAR-10's unless ``dataset`` is given.
    ``options["trust_checkpoint"]`` is the explicit opt-in to unpickling (see :mod:`.checkpoint`).
    """
    source, name = split_spec(spec)
    if not source or (source not in regs.teacher_sources and Path(spec).is_file()):
        source, name = "checkpoint", spec
    ckpt: dict[str, Any] = {}
    if source == "checkpoint" and Path(name).is_file():
        ckpt = load_checkpoint(name, trust=bool(options.get("trust_checkpoint", False)))
        if not isinstance(ckpt, dict):
            ckpt = {}
        dataset = dataset or ckpt.get("model", {}).get("dataset")
    elif source == "hf-hub":  # robust-distill's exports carry their dataset and training config

        exported = read_hub_config(name).get("robust_distill") or {}
        ckpt = {"config": exported.get("config") or {}}
        dataset = dataset or exported.get("dataset")
    dataset = dataset or "cifar10"
    ckpt_data = ckpt.get("config", {}).get("data", {})
    if data_options is None:
        data_options = ckpt_data.get("options", {})
    if data_root is None and ckpt_data.get("dataset") == dataset:
        data_root = ckpt_data.get("root")
    info = dataset_info(regs.datasets.get(dataset), data_root, data_options, regs)
    src = regs.teacher_sources.get(source)
    try:  # a wrong name, option or file: a message before anything is loaded
        regs.call(src.check, name, dataset=info, **options)
    except (ValueError, TypeError) as exc:
        raise InputError(f"model {spec!r}: {exc}") from None
    model = regs.call(src.load, name, dataset=info, **options)
    return model.eval(), dataset, ckpt


def load_model(source: str | os.PathLike[str], *, which: str = "best", dataset: str | None = None,
               device: str | torch.device = "cpu", trust_checkpoint: bool = False, **options: Any) -> nn.Module:
    """A model ready for inference: in eval mode on ``device``, taking images in [0, 1], returning logits.

    :param source: a run folder (its ``best.pt``, or ``which="last"``), a checkpoint file, a folder written by
        ``robust-distill export``, a Hub repo (``hf-hub:user/repo``), or any model spec of the command line
        (``robustbench:Carmon2019Unlabeled``, ``timm:resnet18`` with ``dataset=``).
    :param dataset: the dataset the model classifies; checkpoints and exports know theirs.
    :param trust_checkpoint: allow unpickling more than weights (only for files you trust).
    :param options: options of the model's source, e.g. ``model_dir="./models"`` for ``robustbench:``.
    """
    if trust_checkpoint:
        options["trust_checkpoint"] = True
    model, _, _ = resolve_model(_model_spec(source, which), options, dataset, registries())
    return model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


# -------------------------------------------------------------------------------------------------
# Evaluation
# -------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: per-example correctness under each attack, and the accuracies.

    :param model: what was evaluated (the spec or path given, or the module's class name).
    :param dataset: the dataset's name (``""`` for ``data=`` tensors without ``dataset=``).
    :param split: ``test``, ``val``, or ``given`` (``data=``).
    :param eps: the L-inf radius of the attacks.
    :param seed: the evaluation seed (every chunk of examples is seeded from it and its index).
    :param indices: positions of the examples in the split; ``correct`` and ``labels`` follow this order.
    :param labels: the examples' labels.
    :param result: the per-example correctness (:class:`~robust_distill.engine.evaluation.EvalResult`).
    :param protocols: each attack's protocol, e.g. ``{"pgd20": "PGD-20 (step eps/4 = 2/255)"}``.
    """

    model: str
    dataset: str
    split: str
    eps: float
    seed: int
    indices: Tensor
    labels: Tensor
    result: EvalResult
    protocols: dict[str, str]

    @property
    def n(self) -> int:
        """How many examples were evaluated."""
        return self.result.n

    @property
    def correct(self) -> dict[str, Tensor]:
        """Per-example correctness under each attack (bool tensors, in the order of ``indices``)."""
        return self.result.correct

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracy under each attack, in [0, 1]."""
        return self.result.accuracy

    def worst_case(self, attacks: Sequence[str] | None = None) -> float:
        """Accuracy when an example counts only if it survives every one of ``attacks`` (default: all but
        ``clean``): the per-example worst case, as RobustBench reports an ensemble of attacks."""
        names = list(attacks) if attacks is not None else [a for a in self.correct if a != "clean"]
        return self.result.worst_case(names).float().mean().item()

    def rows(self) -> list[dict[str, Any]]:
        """One row per attack (``attack``, ``label``, ``accuracy``), then ``worst_case`` when more than one
        attack is not ``clean``: the rows of ``robust-distill eval``'s table and JSON."""
        rows = [{"attack": name, "label": self.protocols[name], "accuracy": acc}
                for name, acc in self.accuracy.items()]
        if sum(name != "clean" for name in self.correct) > 1:
            rows.append({"attack": "worst_case", "label": "Worst case over the attacks above",
                         "accuracy": self.worst_case()})
        return rows


def evaluate(model: ModelSource, *, attacks: Sequence[str] | str = ("clean", "pgd20"), dataset: str | None = None,
             data: tuple[Tensor, Tensor] | EvalSet | None = None, split: str = "test",
             n_examples: int | None = 1000, eps: float | str | None = None, batch_size: int = 256,
             device: str | torch.device = "auto", seed: int = 0, precision: str = "fp32",
             data_root: str | None = None, workers: int | None = None, model_options: Mapping[str, Any] | None = None,
             trust_checkpoint: bool = False, surrogate: str | None = None,
             transfer_attacks: Sequence[str] | str = ("pgd20", "cw_inf"), progress: bool = False,
             concurrency: int | str = "auto") -> Evaluation:
    """Evaluate a model against attacks, per example; every attack's result is reproducible by ``seed``.

    :param model: an ``nn.Module`` (inputs in [0, 1]), or what :func:`load_model` takes (run folder, checkpoint,
        exported folder, ``hf-hub:``/``robustbench:``/``timm:`` spec).
    :param attacks: registered evaluation attacks (:func:`list_attacks`), e.g. ``["clean", "pgd20",
        "autoattack"]`` or ``"clean,pgd20"``.
    :param dataset: the dataset to evaluate on (default: the checkpoint's or export's; required for a module).
    :param data: instead of a dataset's split, these ``(images, labels)`` tensors (uint8 or float in [0, 1]; the
        first ``n_examples``) or an :class:`~robust_distill.data.memory.EvalSet`.
    :param split: ``test``, or ``val`` (the training run's held-out split: its ``val_size`` and ``split_seed``).
    :param n_examples: the first N examples of the split (``None`` or 0: all; streamed datasets: N spread over
        the split).
    :param eps: L-inf radius (``0.031`` or ``"8/255"``, in (0, 1]: a :class:`~robust_distill.ThreatModel`'s eps);
        default: the run's evaluation radius (its ``eval.eps``, else ``threat.eps``), else 8/255.
    :param surrogate: a model spec: adds transfer attacks (black-box: crafted on the surrogate, tested on the model).
    :param transfer_attacks: the evaluation attacks crafted on ``surrogate`` (default PGD-20 and CW-inf; the AdaAD
        paper's Table 4 uses FGSM and PGD), each reported as ``transfer_<attack>``.
    :param concurrency: AutoAttack chunks attacked at once, each by its own process (``auto``: several on CUDA,
        as memory allows; 1 on CPU); the per-example results do not depend on it.

    The other parameters are ``robust-distill eval``'s options of the same names. The examples are attacked
    in fixed chunks, each after seeding from ``seed`` and the chunk's index
    (:func:`~robust_distill.engine.evaluation.evaluate_set`), so a result does not depend on the other examples.
    """
    regs = registries()
    dev = resolve_device(str(device), int(os.environ.get("LOCAL_RANK", 0))) if isinstance(device, str) else device
    options = dict(model_options or {})
    if trust_checkpoint:
        options["trust_checkpoint"] = True
    if isinstance(model, nn.Module):
        if dataset is None and data is None:
            raise InputError("evaluate(module, ...): give dataset= (one of: " + ", ".join(regs.datasets.names())
                             + ") or data=(images, labels); only checkpoints and exports know their dataset.")
        name, ckpt = type(model).__name__, {}
    else:
        name = str(model)
        model, dataset, ckpt = resolve_model(_model_spec(model, "best"), options, dataset, regs, data_root=data_root)
    model = model.to(dev)
    cfg = ckpt.get("config", {})
    data_cfg = cfg.get("data", {}) if cfg.get("data", {}).get("dataset") == dataset else {}
    root = data_root or data_cfg.get("root")
    if data is None:
        bundle = regs.call(regs.datasets.get(dataset).load, root=root, **data_cfg.get("options", {}))
        workers = workers if workers is not None else data_cfg.get("workers")
        try:
            splits = make_splits(bundle, val_size=data_cfg.get("val_size", 5000) if split == "val" else 0,
                                 split_seed=data_cfg.get("split_seed", 0),
                                 workers=default_workers() if workers is None else workers,
                                 pin_memory=dev.type == "cuda")
        except ValueError as exc:
            raise ConfigError([f"split='val': {exc} Use split='test'."], "evaluation") from None
        num_classes, eval_set = splits.info.num_classes, splits.eval_set(split, n_examples or None)
    else:
        if isinstance(data, tuple):
            x, y = data[0][:n_examples or None], data[1][:n_examples or None]
            eval_set = TensorEvalSet(x, y, torch.arange(x.shape[0]))
        else:
            eval_set = data
        num_classes = _num_classes(model, eval_set, dev)
    threat = ThreatModel(eps=stored_eval_eps(cfg, 8 / 255) if eps is None else eps)  # the run's evaluation radius
    names = [a.strip() for a in attacks.split(",")] if isinstance(attacks, str) else list(attacks)
    built = make_eval_attacks([a for a in names if a], regs, threat, num_classes=num_classes)
    if surrogate:
        other, _, _ = resolve_model(_model_spec(surrogate, "best"), {}, dataset, regs, data_cfg.get("options", {}),
                                    root)
        other = other.to(dev)
        bases = [a.strip() for a in transfer_attacks.split(",")] if isinstance(transfer_attacks, str) \
            else list(transfer_attacks)
        for base in make_eval_attacks([a for a in bases if a], regs, threat, num_classes=num_classes).values():
            transfer = TransferAttack(base, other, surrogate)
            built[transfer.name] = transfer
    result = evaluate_set(model, eval_set, built, batch_size=batch_size, device=dev, seed=seed, progress=progress,
                          precision=precision, concurrency=concurrency)
    return Evaluation(model=name, dataset=dataset or "", split=split if data is None else "given", eps=threat.eps,
                      seed=seed, indices=eval_set.indices, labels=eval_set.labels, result=result,
                      protocols={n: getattr(a, "label", n) or n for n, a in built.items()})


def _num_classes(model: nn.Module, data: EvalSet, device: torch.device) -> int:
    """The number of classes ``model`` scores (the width of its output on the first example)."""
    x, _ = next(iter(data.batches(1, [0])))
    with torch.no_grad(), model_mode(model, False):
        return int(model(to_float(x, device)).shape[-1])
