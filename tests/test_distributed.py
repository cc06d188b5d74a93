"""``torchrun``: 2 processes (gloo, CPU) reach the weights of 1 process on the same global batches.

Per-sample randomness (augmentation, random PGD starts) is drawn per process, so the comparison turns it
off (``data.augment: false``, ``start: none``) and uses a student without BatchNorm (batch statistics
are per process unless ``sync_bn: true``). RSLAD exercises two student forwards before one backward, ARD
a forward without gradient (its official unused ``S(x)``) between the forward and the backward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from robust_distill.checkpoint import load_checkpoint


def _run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgd_at", "rslad", "ard"])
def test_two_processes_match_one(tiny_raw, tmp_path: Path, method: str) -> None:
    raw = tiny_raw(method, teacher=method != "pgd_at")
    raw["student"] = {"key": "timm:convnet_xs", "kwargs": {"norm": "none"}}
    raw["data"].update(augment=False, batch_size=16)
    raw["inner_attack"] = {"kwargs": {"start": "none"}}
    raw["eval"] = {"n_examples": 16, "attacks": ["clean"], "select": "clean"}
    outs = {}
    for name in ("one", "two"):
        raw["output_dir"] = str(tmp_path / name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        outs[name] = tmp_path / name / "last.pt"
    _run([sys.executable, "-m", "robust_distill", "train", str(tmp_path / "one.yaml")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          "-m", "robust_distill", "train", str(tmp_path / "two.yaml")], tmp_path)
    one, two = load_checkpoint(outs["one"])["state_dict"], load_checkpoint(outs["two"])["state_dict"]
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
    rows = {n: [json.loads(r) for r in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in outs}
    assert [r["epoch"] for r in rows["one"]] == [r["epoch"] for r in rows["two"]] == [0, 1]
    for a, b in zip(rows["one"], rows["two"], strict=True):  # the loss averaged over both ranks is the global one
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert rows["one"][1]["train_loss"] != rows["one"][0]["train_loss"]  # it did train
