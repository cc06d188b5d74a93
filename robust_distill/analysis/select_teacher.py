"""Teacher selection in one call: the criterion of "Toward Understanding Adversarial Distillation: Why Robust
Teachers Fail" (ICML 2026, Sec. 5) from a student spec and candidate teachers.

1. Identification: short adversarial-training runs of the student (``methods`` x ``seeds``, each recording
   per-sample PGD robustness on the first training images, ``eval.train_records``), run by the grid runner of
   :mod:`robust_distill.bench` in a cache folder keyed by their configuration: finished runs are reused,
   interrupted ones resume from ``last.pt``.
2. The robustly unlearnable set S_U and the learnable set S_L of those runs
   (:func:`robust_distill.analysis.unlearnable_sets`).
3. Every candidate teacher's mean entropy and true-class confidence on S_U and S_L, one forward pass each
   (:func:`robust_distill.analysis.teacher_scores`), ranked by entropy on S_U: the higher, the better the
   teacher is predicted to be. The paper's premise is that the candidates are equally good on the learnable
   set (margin Gamma on S_L); a teacher whose true-class confidence on S_L is below ``min_learnable_confidence``
   does not meet it (a uniform-output teacher has maximal entropy everywhere) and is not recommended.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robust_distill.analysis.bench import expand_grid, run_grid
from robust_distill.analysis.unlearnable import teacher_scores, unlearnable_sets
from robust_distill.api import resolve_model
from robust_distill.config import apply_overrides
from robust_distill.config.loading import deep_merge
from robust_distill.core.components import split_spec
from robust_distill.engine.distributed import resolve_device
from robust_distill.errors import SelectionError
from robust_distill.files.atomic import atomic_write_json, atomic_write_text
from robust_distill.results.tables import markdown_table

__all__ = ["Identification", "SelectionError", "identification_config", "identify", "rank_teachers",
           "select_teacher", "format_selection"]

CRITERION = ("Why robust teachers fail (ICML 2026): the teacher with the higher mean predictive entropy on the "
             "student's robustly unlearnable set S_U is predicted to give the more robust student; candidates "
             "must be confident on the learnable set S_L (the paper's premise)")


@dataclass(frozen=True)
class Identification:
    """The short adversarial-training runs of the student that S_U is computed from.

    ``None`` leaves a value to ``base`` (a config mapping) or to the defaults below: PGD-10 training at
    ``eps`` (step eps/4), 3 epochs on the first 5000 training images, lr 0.1 decayed x0.1 at 50% and 75%, wd
    5e-4, checkpoint selection and per-sample records by PGD-20 (1000 validation images, first 2000 training
    images), no final test evaluation.
    """

    methods: tuple[str, ...] = ("pgd_at", "trades")
    seeds: tuple[int, ...] = (0, 1)
    epochs: int | None = None
    train_subset: int | None = None
    records: int | None = None
    eps: float | None = None
    base: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()


DEFAULTS: dict[str, Any] = {
    "method": "pgd_at",
    "channels_last": True,
    "data": {"train_subset": 5000, "batch_size": 128, "eval_batch_size": 500},
    "threat": {"steps": 10},
    "optim": {"epochs": 3, "lr": 0.1, "weight_decay": 5.0e-4,
              "schedule": {"key": "multistep", "kwargs": {"milestones": [0.5, 0.75], "gamma": 0.1}}},
    "eval": {"n_examples": 1000, "attacks": ["clean", "pgd20"], "select": "pgd20", "train_records": 2000,
             "final_attacks": []},
}


def identification_config(student: str, dataset: str, ident: Identification, *, device: str = "auto"
                          ) -> dict[str, Any]:
    """The raw config shared by the identification runs (method and seed vary): defaults < ``ident.base`` <
    the fields of ``ident`` that are set < ``ident.overrides``."""
    raw = deep_merge(DEFAULTS, ident.base)
    raw.update(student=student, device=device)
    raw["data"] = {**raw.get("data", {}), "dataset": dataset}
    if ident.epochs is not None:
        raw["optim"]["epochs"] = ident.epochs
    if ident.train_subset is not None:
        raw["data"]["train_subset"] = ident.train_subset or None  # 0: the whole training split
    if ident.records is not None:
        raw["eval"]["train_records"] = ident.records
    if ident.eps is not None:
        raw["threat"] = {**raw.get("threat", {}), "eps": ident.eps, "step_size": ident.eps / 4}
    raw = apply_overrides(raw, list(ident.overrides))
    if not raw.get("eval", {}).get("train_records"):
        raise SelectionError("the identification runs need eval.train_records > 0 (the number of training images "
                             "whose per-sample robustness S_U is computed from), e.g. --records 2000.")
    raw.pop("output_dir", None)
    return raw


def _cache_folder(cache: Path, raw: Mapping[str, Any], ident: Identification) -> Path:
    """``<cache>/<dataset>-<student>-<hash>``: one folder per identification configuration (the device and the
    output folder do not count), so that runs are reused exactly when they would be the same runs."""
    key = {k: v for k, v in raw.items() if k not in ("device", "output_dir")}
    key["grid"] = {"method": list(ident.methods), "seed": list(ident.seeds)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    student = re.sub(r"[^A-Za-z0-9._+-]", "_", split_spec(str(raw["student"]))[1].split("/")[-1])
    return cache / f"{raw['data']['dataset']}-{student}-{digest}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def identify(raw: Mapping[str, Any], ident: Identification, cache: str | Path, regs: Any, *,
             parallel: int = 1, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run (or reuse) the identification runs in the cache and compute S_U and S_L from them."""
    folder = _cache_folder(Path(cache), raw, ident)
    grid = {"output_dir": str(folder), "base": dict(raw), "grid": {"method": list(ident.methods),
                                                                   "seed": list(ident.seeds)}}
    runs = expand_grid(grid)
    reused = [r.name for r in runs if r.status()["state"] == "done"]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump({"base": dict(raw), "grid": grid["grid"]}, sort_keys=False),
                      folder / "identification.yaml")
    log(f"Identification: {len(runs)} adversarially trained {raw['student']} runs ({', '.join(ident.methods)} x "
        f"seeds {', '.join(map(str, ident.seeds))}) in {folder}: {len(reused)} finished, "
        f"{len(runs) - len(reused)} to run")
    t0 = time.perf_counter()
    states = run_grid(grid, regs, parallel=parallel, log=log)
    failed = {name: state for name, state in states.items() if state != "done"}
    if failed:
        raise SelectionError(
            "identification run(s) did not finish: " + ", ".join(f"{n} ({s})" for n, s in failed.items())
            + f". See train.log in each run folder under {folder}; running the same command again resumes them.")
    sets = unlearnable_sets([r.folder for r in runs])
    sets["data"] = {k: raw["data"].get(k) for k in ("dataset", "root", "options")}
    atomic_write_json(sets, folder / "unlearnable.json")
    details = []
    for r in runs:
        summary = json.loads((r.folder / "summary.json").read_text())
        details.append({"run": str(r.folder), "method": r.raw["method"], "seed": r.raw.get("seed", 0),
                        "peak_epoch": summary["best_epoch"] + 1, summary["select"]: summary["best_value"]})
    return {"folder": str(folder), "runs": details, "reused": len(reused), "trained": len(runs) - len(reused),
            "minutes": round((time.perf_counter() - t0) / 60, 2), "sets": sets,
            "sets_file": str(folder / "unlearnable.json")}


def rank_teachers(rows: Sequence[Mapping[str, Any]], min_learnable_confidence: float
                  ) -> tuple[list[dict[str, Any]], str | None]:
    """Mark each scored teacher (rows of :func:`teacher_scores`, ranked) eligible or not and pick the
    recommendation: the highest-ranked eligible teacher (None when S_U is empty or none is eligible)."""
    out = []
    for row in rows:
        conf = row["learnable"]["confidence"]
        eligible = row["learnable"]["n"] == 0 or conf >= min_learnable_confidence
        out.append({**copy.deepcopy(dict(row)), "eligible": bool(eligible)})
    if not out or out[0]["unlearnable"]["n"] == 0:
        return out, None
    return out, next((r["teacher"] for r in out if r["eligible"]), None)


def select_teacher(student: str, teachers: Sequence[str], regs: Any, *, dataset: str | None = None,
                   ident: Identification = Identification(), cache: str | Path = "runs/select-teacher",
                   device: str = "auto", parallel: int = 1, batch_size: int = 500,
                   min_learnable_confidence: float = 0.5, log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Identify S_U for ``student`` (reusing cached runs), score ``teachers`` (model specs) on it, rank them.

    The dataset and the radius default to those a teacher checkpoint was trained with. Teachers are loaded
    before any training starts, so a bad spec fails at once.
    """
    if not teachers:
        raise SelectionError("give at least one candidate teacher (--teachers A B ...).")
    t0 = time.perf_counter()
    given = apply_overrides(deep_merge(DEFAULTS, ident.base), list(ident.overrides))
    dataset = dataset or given["data"].get("dataset")
    options = given["data"].get("options") or None
    loaded, eps_from = {}, None
    # checkpoints first: they know their dataset, which the other specs (timm:..., robustbench:...) then get
    for spec in sorted(teachers, key=lambda t: not Path(split_spec(t)[1] or t).is_file()):
        try:
            model, dataset, ckpt = resolve_model(spec, {}, dataset, regs, options)
        except Exception as exc:  # any source's error, said with the spec it concerns
            raise SelectionError(f"candidate teacher {spec!r} cannot be loaded: {exc}") from exc
        if eps_from is None and ckpt.get("config", {}).get("threat", {}).get("eps") is not None:
            eps_from = (float(ckpt["config"]["threat"]["eps"]), spec)
        loaded[spec] = model
    models = {spec: loaded[spec] for spec in teachers}
    if ident.eps is None and "eps" not in given.get("threat", {}):
        # one radius for every method (their paper defaults differ: TRADES 0.031, PGD-AT 8/255)
        eps, source = eps_from or (8 / 255, "the default (no teacher checkpoint names one)")
        ident = dataclasses.replace(ident, eps=eps)
        log(f"Radius eps = {eps:g}: {'the training radius of ' if eps_from else ''}{source}")
    raw = identification_config(student, dataset, ident, device=device)
    found = identify(raw, ident, cache, regs, parallel=parallel, log=log)
    t1 = time.perf_counter()
    sets = found.pop("sets")
    bundle = regs.call(regs.datasets.get(dataset).load, root=raw["data"].get("root"),
                       **(raw["data"].get("options") or {}))
    rows = teacher_scores(models, bundle.train_x, bundle.train_y, sets, batch_size=batch_size,
                          device=resolve_device(device))
    ranked, recommended = rank_teachers(rows, min_learnable_confidence)
    t2 = time.perf_counter()
    return {"criterion": CRITERION, "student": student, "dataset": dataset, "identification": found,
            "sets": {k: sets[k] for k in ("size_unlearnable", "size_learnable", "n_recorded")},
            "teachers": ranked, "recommended": recommended, "min_learnable_confidence": min_learnable_confidence,
            "minutes": {"identification": round((t1 - t0) / 60, 2), "scoring": round((t2 - t1) / 60, 2),
                        "total": round((t2 - t0) / 60, 2)}}


def format_selection(result: Mapping[str, Any]) -> str:
    """The ranking as Markdown with its evidence: the identification runs, |S_U| and |S_L|, every score."""
    ident, sets = result["identification"], result["sets"]
    runs = [{"run": Path(r["run"]).name, "peak": r["peak_epoch"],
             "robust": next(v for k, v in r.items() if k.startswith(("val_", "test_")))} for r in ident["runs"]]
    select = next(k for k in ident["runs"][0] if k.startswith(("val_", "test_")))
    lines = [f"Identification runs of {result['student']} on {result['dataset']} ({ident['reused']} reused, "
             f"{ident['trained']} trained; {ident['folder']}):", "",
             markdown_table(runs, [("run", "run"), ("peak", "peak epoch"), ("robust", f"{select} at peak (%)")]), "",
             f"S_U (robustly unlearnable: misclassified under attack by every run at its peak epoch): "
             f"{sets['size_unlearnable']} of {sets['n_recorded']} recorded training images; S_L (correct in every "
             f"run): {sets['size_learnable']}.", ""]
    eligible = f"eligible (conf. on S_L >= {100 * result['min_learnable_confidence']:g}%)"
    table = [{"rank": r["rank"], "teacher": r["teacher"], "h_u": f"{r['unlearnable']['entropy']:.4f}",
              "c_u": r["unlearnable"]["confidence"], "h_l": f"{r['learnable']['entropy']:.4f}",
              "c_l": r["learnable"]["confidence"], "ok": "yes" if r["eligible"] else "no (not confident on S_L)"}
             for r in result["teachers"]]
    lines.append(markdown_table(table, [("rank", "rank"), ("teacher", "teacher"), ("h_u", "entropy on S_U (nats)"),
                                        ("c_u", "true-class conf. on S_U (%)"), ("h_l", "entropy on S_L (nats)"),
                                        ("c_l", "true-class conf. on S_L (%)"),
                                        ("ok", eligible)]))
    lines.append("")
    if result["recommended"]:
        lines.append(f"Recommended teacher: {result['recommended']} (the highest entropy on S_U among the eligible "
                     "candidates).")
    elif sets["size_unlearnable"] == 0:
        lines.append("No recommendation: S_U is empty (every recorded image was learned by some run); record more "
                     "training images (--records) or add runs (--seeds, --methods).")
    else:
        lines.append("No recommendation: no candidate is confident on S_L.")
    lines.append(f"Criterion: {result['criterion']}.")
    m = result["minutes"]
    lines.append(f"Time: {m['total']:.1f} min ({m['identification']:.1f} identification, {m['scoring']:.1f} scoring).")
    return "\n".join(lines)
