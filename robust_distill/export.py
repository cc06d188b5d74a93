"""Models out: a student as a timm / Hugging Face Hub folder with a model card (``robust-distill export``).

The folder is what ``timm.models.push_to_hf_hub`` / ``save_for_hf`` write (``timm/models/_hub.py``):

* ``model.safetensors``: the network's ``state_dict`` in timm's architecture (a normalisation wrapper is not
  part of it: its mean/std go to ``pretrained_cfg``, where timm keeps them);
* ``config.json``: ``architecture``, ``num_classes``, ``num_features``, ``model_args`` (``in_chans`` and the
  architecture's options) and ``pretrained_cfg`` (``input_size``, ``mean``, ``std``, ...), plus a
  ``robust_distill`` block that timm ignores: the spec that rebuilds the model here (inputs in [0, 1],
  normalisation inside), the dataset, the threat model, the training config and the evaluation results;
* ``README.md``: the model card (Hugging Face front matter, timm tags) with the robustness table as
  RobustBench reports models (clean, PGD-20, AutoAttack; dataset, threat model, eps, examples), the plots,
  the training method and config, and how to load it;
* with ``robustbench=NAME``, ``model_info/<dataset>/Linf/NAME.json``: the model-info file a RobustBench
  model-zoo submission adds to its repository (:func:`robustbench_model_info`), only for an AutoAttack
  evaluation on the whole test set.

:mod:`robust_distill.files.hub` finds the files of such a folder again (locally or on the Hub); the ``hf-hub:``
teacher and student source (:mod:`robust_distill_plugins.hf_hub`) builds models from them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save

from robust_distill import _moved
from robust_distill.config import stored_eval_eps
from robust_distill.core.components import split_spec
from robust_distill.core.threat import format_eps, parse_fraction
from robust_distill.engine.tracking import plot_run_curves
from robust_distill.errors import HubError
from robust_distill.files.atomic import atomic_write, atomic_write_text
from robust_distill.files.checkpoint import build_from_checkpoint, load_checkpoint
from robust_distill.files.hub import CONFIG, WEIGHTS, locate_checkpoint, read_hub_config

__all__ = ["export_model", "model_card", "robustbench_model_info", "check_robustbench", "recorded_results",
           "CARD_COLUMNS", "ROBUSTBENCH_KEYS", "ROBUSTBENCH_LINF"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release

#: options of the ``timm:`` source that say where weights come from or wrap the model: not architecture arguments
SOURCE_OPTIONS = frozenset({"pretrained", "pretrained_file", "checkpoint_path", "normalize", "trust_checkpoint"})
#: the robustness columns of a model card, (attack, title), in RobustBench's order; others follow
CARD_COLUMNS = (("clean", "Clean"), ("pgd20", "PGD-20"), ("autoattack", "AutoAttack"),
                ("autoattack_apgd", "AutoAttack APGD-CE+T"))
#: the keys of RobustBench's model-info files, in their order (RobustBench/robustbench,
#: model_info/cifar10/Linf/Wang2023Better_WRN-28-10.json; a copy is tests/fixtures/robustbench/)
ROBUSTBENCH_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                    "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable")
#: RobustBench's L-inf leaderboards an export can enter: dataset -> their radius (ImageNet's is ranked on its
#: own 5,000-image subset of the validation set, which robust-distill's evaluation does not reproduce)
ROBUSTBENCH_LINF = {"cifar10": 8 / 255, "cifar100": 8 / 255}
#: model-info keys the evaluation fills: ``model_info=`` cannot set them
ROBUSTBENCH_MEASURED = ("dataset", "eps", "clean_acc", "autoattack_acc")


def recorded_results(run_dir: Path | None, which: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """What the run measured for its ``which`` checkpoint: the final test evaluation, else the selection split."""
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return {}
    summary = json.loads((run_dir / "summary.json").read_text())
    ev = config.get("eval", {})
    final = (summary.get("final") or {}).get(which)
    if final:  # the per-example file counts the test images (final_n_examples may exceed the split)
        records = run_dir / f"test_correct_{which}.pt"
        n = int(load_checkpoint(records)["indices"].numel()) if records.is_file() else ev.get("final_n_examples")
        return {"split": "test", "n_examples": n, "accuracy": dict(final)}
    split = ev.get("split", "val")
    accuracy = {k[len(split) + 1:]: v for k, v in (summary.get(which) or {}).items() if k.startswith(f"{split}_")}
    return {"split": split, "n_examples": ev.get("n_examples"), "accuracy": accuracy} if accuracy else {}


def export_model(run_or_checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], regs: Any, *,
                 which: str = "best", results: Mapping[str, Any] | None = None, repo_id: str | None = None,
                 overwrite: bool = False, robustbench: str | None = None,
                 model_info: Mapping[str, Any] | None = None) -> Path:
    """Write the student of a run (its ``which`` = ``best``/``last`` checkpoint) or of a checkpoint file as a
    timm / Hub folder: ``model.safetensors``, ``config.json``, ``README.md`` and the run's curves. Returns it.

    ``results`` (``{"split", "n_examples", "accuracy": {attack: value}}``) replaces what the run recorded (an
    evaluation made for the export); ``repo_id`` names the Hub repo in the card's usage section.
    ``robustbench`` (a RobustBench model name, ``Lee2026Robust_convnet_m``) adds
    ``model_info/<dataset>/Linf/<robustbench>.json`` (:func:`robustbench_model_info`, with ``model_info``'s
    descriptive keys); a run it cannot describe is refused before anything is written.
    """
    ckpt_path, run_dir = locate_checkpoint(run_or_checkpoint, which)
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise HubError(f"{str(ckpt_path)!r} is not a robust-distill checkpoint: only those name their architecture "
                       "(a plain state dict can be exported with timm's save_for_hf).")
    spec = dict(ckpt["model"])
    source, arch = split_spec(spec["key"])
    kwargs = dict(spec.get("kwargs", {}))
    if source == "hf-hub":  # a model that came from a Hub folder: its architecture is the folder's
        hub_cfg = read_hub_config(arch)
        rd = hub_cfg.get("robust_distill") or {}
        arch = split_spec(rd["key"])[1] if rd.get("key") else hub_cfg["architecture"]
        kwargs = dict(rd.get("kwargs") or hub_cfg.get("model_args", {}))
    elif source != "timm":
        raise HubError(f"The student {spec['key']!r} is not a timm model; only timm architectures have a timm / Hub "
                       "format.")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HubError(f"{str(out)!r} exists and is not empty; choose another folder or pass --force.")

    model, _ = build_from_checkpoint(ckpt_path, regs)
    wrapped = kwargs.get("normalize") not in (None, "none")
    network = model.model if wrapped else model  # Normalized(model): timm keeps normalisation outside
    channels = int(spec["input_shape"][0])
    mean = model.mean.flatten().tolist() if wrapped else [0.0] * channels
    std = model.std.flatten().tolist() if wrapped else [1.0] * channels
    config = ckpt.get("config") or (yaml.safe_load((run_dir / "config.yaml").read_text()) if run_dir else {})
    pretrained = getattr(network, "pretrained_cfg", {}) or {}
    hub_config = {
        "architecture": arch,
        "num_classes": int(spec["num_classes"]),
        "num_features": int(getattr(network, "num_features", 0) or 0),
        "model_args": {**{k: v for k, v in kwargs.items() if k not in SOURCE_OPTIONS}, "in_chans": channels},
        "pretrained_cfg": {"input_size": list(spec["input_shape"]), "mean": mean, "std": std,
                           "interpolation": "bilinear", "crop_pct": 1.0, "first_conv": pretrained.get("first_conv"),
                           "classifier": pretrained.get("classifier"), "license": "mit"},
        "robust_distill": {
            "key": f"timm:{arch}", "kwargs": kwargs, "dataset": spec.get("dataset"),
            "input_shape": list(spec["input_shape"]), "input_range": [0.0, 1.0], "threat_model": "Linf",
            "eps": stored_eval_eps(config), "method": config.get("method"),
            "teachers": {role: t.get("key") for role, t in (config.get("teachers") or {}).items()},
            "epoch": ckpt.get("epoch"), "parameters": sum(p.numel() for p in network.parameters()),
            "evaluation": dict(results) if results is not None else recorded_results(run_dir, which, config),
            "config": config,
        },
    }
    info_file = None
    if robustbench is not None:  # every refusal before the first file is written
        rd = hub_config["robust_distill"]
        method = regs.methods.entry(rd["method"]).obj if rd.get("method") in regs.methods else None
        _robustbench_name(robustbench)
        info = robustbench_model_info(
            rd["evaluation"], dataset=rd["dataset"], eps=rd["eps"], architecture=arch, model_info=model_info,
            test_size=lambda: _test_size(regs, rd["dataset"], config),
            footnote=_footnote(rd.get("method"), getattr(method, "reference", ""), rd["teachers"]))
        info_file = out / "model_info" / rd["dataset"] / "Linf" / f"{robustbench}.json"
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda f: f.write(save(state)))
    atomic_write_text(json.dumps(hub_config, indent=2) + "\n", out / CONFIG)
    plots = _copy_plots(run_dir, out)
    atomic_write_text(model_card(hub_config, plots=plots, repo_id=repo_id), out / "README.md")
    if info_file is not None:
        info_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(info, indent=2) + "\n", info_file)
    return out


# -------------------------------------------------------------------------------------------------
# RobustBench's model-info file
# -------------------------------------------------------------------------------------------------


def robustbench_model_info(evaluation: Mapping[str, Any], *, dataset: str, eps: Any, architecture: str,
                           test_size: Callable[[], int], footnote: str = "",
                           model_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model-info JSON of a RobustBench model-zoo submission (keys :data:`ROBUSTBENCH_KEYS`, values as
    RobustBench writes them: accuracies as percent strings with two decimals, ``"eps": "8/255"``).

    ``clean_acc`` and ``autoattack_acc`` come from ``evaluation`` (``{"split", "n_examples", "accuracy"}``),
    which must hold ``clean`` and ``autoattack`` (AutoAttack standard) on all ``test_size()`` test images, at
    the leaderboard's radius (:data:`ROBUSTBENCH_LINF`); otherwise :class:`HubError` says what is missing and
    how to measure it. ``reported`` is the AutoAttack accuracy too (RobustBench's column for the paper's own
    number); ``model_info`` sets the descriptive keys (``link``, ``name``, ``authors``, ``venue``,
    ``additional_data``: true when training used data beyond the training split, ...).
    """
    radius = check_robustbench(dataset, eps, model_info)
    info = dict(model_info or {})
    accuracy = evaluation.get("accuracy") or {}
    measure = ("Measure it with `robust-distill export RUN OUT --evaluate clean,autoattack --n-examples 0` (or "
               "train with eval.final_attacks: [clean, autoattack] and eval.final_n_examples: null).")
    if evaluation.get("split") != "test" or not {"clean", "autoattack"} <= set(accuracy):
        found = f"{', '.join(accuracy)} on the {evaluation.get('split')} split" if accuracy else "no evaluation"
        raise HubError(f"A RobustBench model-info file needs clean and AutoAttack (standard) accuracy on the test "
                       f"set; the run recorded {found}. {measure}")
    n, total = evaluation.get("n_examples"), test_size()
    if n != total:
        raise HubError(f"AutoAttack ran on {n if n is not None else 'an unknown number of'} of the {total} test "
                       f"images; RobustBench reports the whole test set. {measure}")
    robust = f"{100 * accuracy['autoattack']:.2f}"
    filled = {"link": "", "name": f"{architecture} trained with robust-distill", "authors": "",
              "additional_data": False, "number_forward_passes": 1, "dataset": dataset, "venue": "",
              "architecture": architecture, "eps": format_eps(radius), "clean_acc": f"{100 * accuracy['clean']:.2f}",
              "reported": robust, "footnote": footnote, "autoattack_acc": robust, "unreliable": False}
    return {key: info.get(key, filled[key]) for key in ROBUSTBENCH_KEYS}


def check_robustbench(dataset: str, eps: Any, model_info: Mapping[str, Any] | None = None,
                      name: str | None = None) -> float:
    """What can be refused before any evaluation: a dataset or radius RobustBench does not rank
    (:data:`ROBUSTBENCH_LINF`), ``model_info`` keys that do not exist or are measured, a bad model ``name``.
    Returns the radius."""
    if name is not None:
        _robustbench_name(name)
    keys = list(model_info or {})
    problems = ([f"{k!r} is not a key of RobustBench's files" for k in keys if k not in ROBUSTBENCH_KEYS]
                + [f"{k!r} comes from the evaluation" for k in keys if k in ROBUSTBENCH_MEASURED])
    if problems:
        raise HubError(f"RobustBench model info: {'; '.join(problems)}. Keys you can set: "
                       f"{', '.join(k for k in ROBUSTBENCH_KEYS if k not in ROBUSTBENCH_MEASURED)}.")
    if dataset not in ROBUSTBENCH_LINF:
        raise HubError(f"RobustBench has no L-inf leaderboard for {dataset!r} that this export can enter: its "
                       f"L-inf leaderboards here are {', '.join(ROBUSTBENCH_LINF)} (ImageNet is ranked on "
                       "RobustBench's own 5,000-image subset).")
    radius = parse_fraction(eps) if eps is not None else None
    if radius is None or abs(radius - ROBUSTBENCH_LINF[dataset]) > 1e-6:
        raise HubError(f"RobustBench ranks {dataset} at eps {format_eps(ROBUSTBENCH_LINF[dataset])}; this run was "
                       f"evaluated at {format_eps(radius) if radius is not None else 'an unknown eps'}.")
    return radius


def _robustbench_name(name: str) -> str:
    """A RobustBench model name is a file name: letters, digits, ``_``, ``-``, ``.``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise HubError(f"RobustBench model name {name!r}: use letters, digits, '_', '-' and '.' only, as in "
                       "'Lee2026Robust_convnet_m' (it names the model-info file).")
    return name


def _test_size(regs: Any, dataset: str, config: Mapping[str, Any]) -> int:
    """How many images the run's dataset has in its test split (its data root and options)."""
    data = config.get("data") or {}
    bundle = regs.call(regs.datasets.get(dataset).load, root=data.get("root"), **(data.get("options") or {}))
    return int(bundle.test_y.shape[0]) if hasattr(bundle, "test_y") else len(bundle.test)


def _footnote(method: str | None, reference: str, teachers: Mapping[str, str]) -> str:
    """Where the model comes from: robust-distill's method (its paper) and teachers."""
    paper = f" ({reference})" if reference else ""
    taught = f", teachers {', '.join(f'{role} {key}' for role, key in teachers.items())}" if teachers else ""
    return f"Trained with robust-distill: method {method}{paper}{taught}."


def _copy_plots(run_dir: Path | None, out: Path) -> list[str]:
    """The run's accuracy curves (``curves.png``: written when training with loggers, else drawn now)."""
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return []
    curves = run_dir / "curves.png"
    if not curves.is_file():
        curves = plot_run_curves(run_dir) or curves
    if not curves.is_file():
        return []
    atomic_write(out / "curves.png", lambda f: f.write(curves.read_bytes()))
    return ["curves.png"]


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "not evaluated"


def model_card(hub_config: Mapping[str, Any], *, plots: Sequence[str] = (), repo_id: str | None = None) -> str:
    """The ``README.md`` of an exported folder: Hugging Face front matter, RobustBench's table, plots, usage."""
    rd = hub_config["robust_distill"]
    arch, dataset = hub_config["architecture"], rd.get("dataset") or "unknown"
    ev = rd.get("evaluation") or {}
    acc = ev.get("accuracy") or {}
    eps = rd.get("eps")
    eps_text = format_eps(float(eps)) if isinstance(eps, (int, float)) else "?"
    teachers = ", ".join(f"{role} `{key}`" for role, key in (rd.get("teachers") or {}).items()) or "none"
    repo = repo_id or "<user>/<repo>"
    columns = [(a, t) for a, t in CARD_COLUMNS if a in acc or a in ("clean", "pgd20", "autoattack")]
    columns += [(a, a) for a in acc if a not in dict(CARD_COLUMNS)]
    examples = f"{ev.get('n_examples') or 'all'} ({ev.get('split')} split)" if ev else "-"
    head = ["dataset", "threat model", "eps", *[t + " (%)" for _, t in columns], "examples"]
    row = [dataset, rd.get("threat_model", "Linf"), eps_text, *[_pct(acc.get(a)) for a, _ in columns], examples]
    params = rd.get("parameters")
    lines = [
        "---", "tags:", "- image-classification", "- timm", "- adversarial-robustness", "- robust-distill",
        "library_name: timm", "license: mit", "datasets:", f"- {dataset}", "---", "",
        f"# {arch}: adversarially robust on {dataset} (L-inf, eps {eps_text})", "",
        f"A `{arch}` ({f'{params:,} parameters, ' if params else ''}{hub_config['num_classes']} classes) "
        f"trained by robust-distill with the `{rd.get('method')}` method (teachers: "
        f"{teachers}). It takes images in [0, 1] of shape {' x '.join(map(str, rd['input_shape']))}.", "",
        "## Robustness", "",
        "Accuracy in RobustBench's format: clean; PGD-20 (20 steps of eps/4, uniform random start); AutoAttack "
        "standard (APGD-CE, APGD-T, FAB-T, Square; reference implementation), or its APGD-CE + APGD-T stages.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(row) + " |", "",
    ]
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    lines += [
        "## Usage", "",
        "```bash",
        f"robust-distill eval hf-hub:{repo} --dataset {dataset} --attacks clean,pgd20,autoattack --eps {eps_text}",
        "```", "",
        f"In a robust-distill config, as a teacher or a student to fine-tune: `teachers: {{robust: hf-hub:{repo}}}`.",
        "With timm and safetensors only (robust-distill's architectures are registered in timm when its plugins "
        "are imported; inputs in [0, 1], normalised with `pretrained_cfg`'s mean/std):", "",
        "```python",
        "import json, timm, safetensors.torch",
        "cfg = json.load(open(\"config.json\"))",
        "model = timm.create_model(cfg[\"architecture\"], num_classes=cfg[\"num_classes\"], **cfg[\"model_args\"])",
        "model.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))",
        "```", "",
        "## Training", "",
        f"Method `{rd.get('method')}`, the checkpoint after epoch {rd.get('epoch')}; the run's resolved "
        "configuration:", "",
        "```yaml", yaml.safe_dump(rd.get("config") or {}, sort_keys=False).rstrip(), "```", "",
    ]
    return "\n".join(lines)
