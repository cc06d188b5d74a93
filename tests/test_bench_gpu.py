"""``benchmarks/bench_gpu.py --smoke``: the GPU benchmark's code runs on CPU-sized models (no GPU numbers)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from .scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return load_script("benchmarks/bench_gpu.py")


@pytest.mark.slow
def test_bench_gpu_smoke_measures_every_loop_and_writes_its_tables(tmp_path: Path) -> None:
    bench = _bench()
    results = bench.main(["--smoke", "--methods", "adaad,pgd_at", "--no-eval", "--out", str(tmp_path)])
    jobs = {(j["method"], j["teacher"]): j["variants"] for j in results["training"]}
    assert set(jobs) == {("adaad", "wrn10_1"), ("pgd_at", None)}
    assert set(jobs["adaad", "wrn10_1"]) == {"official", "engine fp32", "hand fp32", "engine bf16", "hand bf16",
                                              "engine bf16+fold", "hand bf16+fold"}  # compiled rows: CUDA only
    adaad = next(j for j in results["training"] if j["method"] == "adaad")
    assert adaad["best"] in jobs["adaad", "wrn10_1"] and adaad["best"].startswith("engine")
    assert adaad["teacher_bn_folded"] == {"engine fp32": 0, "engine bf16": 0, "engine bf16+fold": 3}  # WRN-10-1
    for variants in jobs.values():
        assert variants["official"]["speedup_vs_official"] == 1.0
        assert all(v["images_per_s"] > 0 and v["hours_200_epochs"] > 0 for v in variants.values())
    assert jobs["adaad", "wrn10_1"]["engine bf16"]["time_ratio_vs_hand"] > 0
    assert json.loads((tmp_path / "bench_gpu.json").read_text())["environment"]["smoke"] is True
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "SMOKE: tiny CPU-sized models, not a measurement" in table and "## Best engine setting per method" in table


def test_official_style_steps_train_and_the_worst_case_wrapper_is_never_broken() -> None:
    bench = _bench()
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).requires_grad_(False)
    x, y = torch.rand(6, 3, 4, 4), torch.randint(0, 10, (6,))
    for method in ("pgd_at", "trades", "rslad", "adaad", "ciard"):
        robust = copy.deepcopy(teacher).requires_grad_(method == "ciard")  # CIARD's ITT trains it
        teachers = {"robust": robust, "natural": teacher}
        step = bench.Official(method, student, teachers, steps=2)
        before = student[1].weight.detach().clone()
        step(x, y)
        assert not torch.equal(before, student[1].weight), method
        if method == "ciard":
            assert not torch.equal(robust[1].weight, teacher[1].weight)
    wrapped = bench.AlwaysRobust(student)
    assert (wrapped(torch.rand(8, 3, 4, 4)).argmax(1) == 0).all()
