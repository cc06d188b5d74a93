"""Every method's resolved parts (issue 20): the shared inner-attack presets and the one CIARD method definition
change no method's configuration. The expected values are literals taken from ``main`` before the presets."""

from __future__ import annotations

from typing import Any

import pytest

from robust_distill.config import config_to_dict, resolve_config

#: ``inner_attack`` of every built-in method, as ``resolve_config`` gave it before the shared presets
INNER_ATTACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "adaad": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "teacher_adv"}),
    "adaad_igdm": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "teacher_adv"}),
    "adaiad": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "teacher_adv"}),
    "akd": ("pgd_ce", {"bn_mode": "eval", "clamp_start": True, "start": "gaussian"}),
    "akd2": ("pgd_ce", {"bn_mode": "train", "clamp_start": False, "start": "uniform"}),
    "ard": ("pgd_ce", {"bn_mode": "train", "clamp_start": False, "start": "uniform"}),
    "bmtard": ("pgd_ce", {"bn_mode": "eval", "clamp_start": False, "start": "gaussian"}),
    "ciard": ("pgd_ce", {"bn_mode": "eval", "clamp_start": False, "start": "gaussian"}),
    "ciard_no_push": ("pgd_ce", {"bn_mode": "eval", "clamp_start": False, "start": "gaussian"}),
    "dgad": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "teacher_adv"}),
    "iad1": ("pgd_ce", {"bn_mode": "train", "clamp_start": False, "start": "uniform"}),
    "iad2": ("pgd_ce", {"bn_mode": "train", "clamp_start": False, "start": "uniform"}),
    "inplane_at": ("subspace_pgd", {"keep": "in", "restarts": 2}),
    "mmard": ("mmard_boundary", {"boundary_weight": 1.0}),
    "mtard": ("pgd_ce", {"bn_mode": "eval", "clamp_start": False, "start": "gaussian"}),
    "natural": ("none", {}),
    "oracle_adv": ("oracle_pgd", {"loss": "l2", "target": "teacher_adv"}),
    "oracle_label": ("none", {}),
    "oracle_logit": ("none", {}),
    "oracle_logit_gaussian": ("gaussian_noise", {"sigma": 0.1}),
    "outplane_at": ("subspace_pgd", {"keep": "out", "restarts": 2}),
    "peeraid": ("kl_pgd", {"bn_mode": "eval", "clamp_start": False, "role": "peer", "start": "gaussian",
                           "target": "teacher_clean"}),
    "pgd_at": ("pgd_ce", {"bn_mode": "eval", "clamp_start": True, "start": "uniform"}),
    "rslad": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "teacher_clean"}),
    "rslad_igdm": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "teacher_clean"}),
    "trades": ("kl_pgd", {"clamp_start": False, "start": "gaussian", "target": "student_clean"}),
}

CIARD_LOSS = {"eta": 0.025, "eta_milestones": [215, 260, 285], "eta_tau": 0.001, "push": True,
              "push_temperature": 5.0, "weighted": False}
CIARD_ITT = {"lr": 0.0001, "momentum": 0.1, "start_epoch": 50, "weight_decay": 0.0002}


def resolved(tiny_raw, regs, method: str) -> dict[str, Any]:
    raw = tiny_raw(method)
    del raw["optim"], raw["threat"]  # the method's own defaults
    return config_to_dict(resolve_config(raw, regs, check=False))


@pytest.mark.parametrize("method", sorted(INNER_ATTACKS))
def test_every_method_resolves_its_former_inner_attack(tiny_raw, regs, method: str) -> None:
    key, kwargs = INNER_ATTACKS[method]
    assert resolved(tiny_raw, regs, method)["inner_attack"] == {"key": key, "kwargs": kwargs}


def test_ciard_no_push_is_ciard_with_push_false(tiny_raw, regs) -> None:
    ciard, no_push = resolved(tiny_raw, regs, "ciard"), resolved(tiny_raw, regs, "ciard_no_push")
    assert ciard["outer_loss"] == {"key": "ciard", "kwargs": CIARD_LOSS}
    assert no_push["outer_loss"] == {"key": "ciard", "kwargs": {**CIARD_LOSS, "push": False}}
    assert ciard["teacher_updater"] == no_push["teacher_updater"] == {"key": "ciard_itt", "kwargs": CIARD_ITT}
    for config in (ciard, no_push):
        del config["method"], config["outer_loss"], config["output_dir"]
    assert ciard == no_push
