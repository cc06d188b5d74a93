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

from robust_distill.files.checkpoint import load_checkpoint


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
    raw["eval"] = {"n_examples": 16, "attacks": ["clean"], "select": "clean", "final_attacks": ["clean", "pgd20"],
                   "final_n_examples": 16}
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
    # per-epoch and final evaluations ran on both processes (each its share of the examples)
    summaries = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in outs}
    assert summaries["one"]["final"]["last"]["clean"] == summaries["two"]["final"]["last"]["clean"]
    assert (tmp_path / "two" / "test_correct_last.pt").is_file()


SHARD_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from robust_distill.data.splits import make_splits
from robust_distill.core.manager import get_registries

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
bundle = get_registries().datasets.get("image_folder").load(root=sys.argv[1], padding=2)
splits = make_splits(bundle, val_size=5, workers=1)
mine = []
for epoch in (0, 1):
    batches = []
    for x, y in splits.train_batches(epoch, batch_size=6, seed=3, device="cpu", rank=rank, world_size=world):
        c = (x[:, :, 4, 4] * 255).round()
        batches.append({"ids": (c[:, 0] + 256 * c[:, 1]).long().tolist(), "pixels": x.flatten(1).sum(1).tolist()})
    mine.append(batches)
everyone = [None] * world
dist.all_gather_object(everyone, mine)
if rank == 0:
    json.dump(everyone, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_streamed_shards_are_disjoint_cover_the_epoch_and_match_one_process(regs, tmp_path: Path) -> None:
    """2 gloo processes reading a streamed image folder: each global batch of the 1-process run is split
    ``[rank::2]`` between them, augmentation included (it is drawn per sample, not per process)."""
    from robust_distill.data.splits import make_splits

    from .conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs")  # 24 images, 5 held out: 19 to train, an odd number
    (tmp_path / "shards.py").write_text(SHARD_SCRIPT)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "shards.py",
          str(root), str(tmp_path / "shards.json")], tmp_path)
    shards = json.loads((tmp_path / "shards.json").read_text())
    splits = make_splits(regs.datasets.get("image_folder").load(root=str(root), padding=2), val_size=5)
    train = set(splits.train_index.tolist())
    for epoch in (0, 1):
        one = list(splits.train_batches(epoch, batch_size=6, seed=3, device="cpu"))
        ranks = [shards[r][epoch] for r in (0, 1)]
        assert [len(b["ids"]) for b in ranks[0]] == [len(b["ids"]) for b in ranks[1]] == [3, 3, 3, 1]  # in step
        seen = [i for r in ranks for b in r for i in b["ids"]]
        assert set(seen) == train and len(seen) == 20  # all 19, one repeated to even out the ranks
        x = torch.cat([x for x, _ in one])
        c = (x[:, :, 4, 4] * 255).round()
        ids, pixels = (c[:, 0] + 256 * c[:, 1]).long().tolist(), x.flatten(1).sum(1).tolist()
        ids, pixels = ids + ids[:1], pixels + pixels[:1]  # DistributedSampler's padding: the first again
        for b in range(4):
            for r in (0, 1):
                assert ranks[r][b]["ids"] == ids[6 * b:6 * b + 6][r::2]
                assert ranks[r][b]["pixels"] == pytest.approx(pixels[6 * b:6 * b + 6][r::2], abs=1e-4)
        assert not set(ranks[0][0]["ids"]) & set(ranks[1][0]["ids"])
