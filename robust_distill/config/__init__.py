"""YAML configuration: layered defaults, ``--set`` overrides, and validation before any work starts.

Layers, later wins key by key: the schema's defaults < the method's paper defaults < the YAML file <
``--set key=value`` overrides. The resolved configuration is validated as a whole (unknown keys, wrong
types, unknown plugin names, epsilon outside (0, 1], non-finite floats, integers beyond 64 bits, missing files)
and every problem is reported at once. Validation builds the run without training it: every part is constructed
with its options, the lr schedule evaluated at every epoch, the student and teachers built on the ``meta``
device (:func:`validate`), so whatever ``train`` would refuse in its first second is refused here.

The package, by concern: :mod:`.schema` (the dataclasses and typed conversion), :mod:`.loading` (strict YAML,
overrides, layers), :mod:`.validation` (the named checkers), :mod:`.resume` (what may change on resume); this
module resolves a config from them (:func:`resolve_config`, :func:`load_config`) and re-exports their public
names. May import: :mod:`robust_distill.data`, :mod:`robust_distill.core` and :mod:`robust_distill.errors`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robust_distill import _moved
from robust_distill.config.loading import (
    BASE_LAYER,
    StrictLoader,
    apply_overrides,
    deep_merge,
    method_layer,
    normalise,
    read_yaml,
)
from robust_distill.config.resume import RESUME_MAY_DIFFER, ResumeMismatchError, config_differences
from robust_distill.config.schema import (
    COMPILE_MODES,
    SCHEMA_VERSION,
    Config,
    DataConfig,
    EvalConfig,
    OptimConfig,
    SWAConfig,
    build_section,
    config_to_dict,
    plain_data,
    plain_value,
    stored_eval_eps,
)
from robust_distill.config.validation import validate
from robust_distill.core.registry import UnknownNameError
from robust_distill.errors import ConfigError

__all__ = ["Config", "DataConfig", "OptimConfig", "EvalConfig", "SWAConfig", "ConfigError", "load_config",
           "resolve_config", "apply_overrides", "config_to_dict", "read_yaml", "StrictLoader", "config_differences",
           "RESUME_MAY_DIFFER", "ResumeMismatchError", "plain_data", "effective_config", "stored_eval_eps",
           "validate", "COMPILE_MODES"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release


def resolve_config(raw: Mapping[str, Any], regs: Any, *, overrides: list[str] = (),  # type: ignore[assignment]
                   source: str = "config", check: bool = True) -> Config:
    """Layer defaults, method defaults, ``raw`` and ``overrides``; validate; return a :class:`Config`."""
    user = normalise(apply_overrides(raw, list(overrides)))
    problems: list[str] = []
    if not isinstance(user.get("method"), str):
        raise ConfigError(["method: required, e.g. method: adaad. Registered methods: "
                           + ", ".join(regs.methods.names())], source)
    try:
        method = regs.methods.get(user["method"])
        layered = deep_merge(deep_merge(BASE_LAYER, method_layer(method)), user)
    except UnknownNameError as exc:
        raise ConfigError([f"method: {exc}"], source) from None
    if layered.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(f"version: this robust-distill reads config version {SCHEMA_VERSION}, "
                        f"got {layered.get('version')!r}.")
    cfg = build_section(Config, layered, "", problems)
    if cfg is not None and getattr(cfg.optim, "amp", False):  # (optim is None when it has errors)
        cfg = _amp_alias(cfg, problems)
    if cfg is not None and check and not problems:  # names and files are checked once types are right
        validate(cfg, regs, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return cfg


def _amp_alias(cfg: Config, problems: list[str]) -> Config:
    """``optim.amp: true`` is the deprecated spelling of ``optim.precision: fp16``."""
    if cfg.optim.precision == "bf16":
        problems.append("optim.amp: true is the deprecated alias of optim.precision: fp16 and conflicts with "
                        "optim.precision: bf16; remove optim.amp.")
        return cfg
    warnings.warn("optim.amp is deprecated: write optim.precision: fp16 (or bf16 on GPUs that have it: "
                  "Ampere and later).", FutureWarning, stacklevel=3)
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, precision="fp16", amp=False))


def load_config(path: str | os.PathLike[str], regs: Any, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a YAML config file and resolve it (see :func:`resolve_config`)."""
    p = Path(path)
    raw = read_yaml(p) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(["the top level must be a mapping of keys (method:, student:, ...)."], str(p))
    return resolve_config(raw, regs, overrides=list(overrides), source=str(p))


#: constructor arguments the engine passes itself (``Registry.build``'s ``provided``): not user options
ENGINE_ARGUMENTS = frozenset({"epochs", "num_classes", "registries", "batch_size", "output_dir", "eps"})


def effective_config(cfg: Config, regs: Any) -> dict[str, Any]:
    """The config as plain data, each part's ``kwargs`` completed with its constructor's defaults: every value
    the run uses (what ``train --check`` prints)."""
    out = plain_data(config_to_dict(cfg))
    parts = [(regs.inner_attacks, out["inner_attack"]), (regs.outer_losses, out["outer_loss"]),
             (regs.teacher_updaters, out["teacher_updater"]), (regs.lr_schedules, out["optim"]["schedule"]),
             *((regs.loggers, part) for part in out["logging"])]
    for registry, part in parts:
        try:
            params = inspect.signature(registry.get(part["key"])).parameters.values()
        except (TypeError, ValueError, UnknownNameError):
            continue
        defaults = {p.name: p.default for p in params if p.default is not p.empty
                    and p.name not in part["kwargs"] and p.name not in ENGINE_ARGUMENTS}
        part["kwargs"] = {**part["kwargs"], **{k: plain_value(v) for k, v in defaults.items()}}
    return out
