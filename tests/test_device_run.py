"""``benchmarks/gpu/device_run.sh dry``: the GPU machine's one command runs its steps at CPU size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .subproc import child_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_run_dry_mode_runs_tests_benchmark_and_autoattack_steps(tmp_path: Path) -> None:
    env = child_env({"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "RD_DEVICE_LIMIT_S": "900"})
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "device_run.sh"), "dry"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (tmp_path / "out" / "device_run.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "no GPU: dry run" in log and "imports ok" in log and "robust-distill: already installed" in log
    # the cuda tests are collected and skipped, in both orders, and pytest's summary is kept
    for name in ("cuda_tests", "cuda_tests_reversed"):
        summary = (tmp_path / "out" / f"{name}.log").read_text()
        assert " skipped" in summary and "failed" not in summary, summary[-2000:]
    assert (tmp_path / "out" / "cuda_tests.xml").is_file()
    training = json.loads((tmp_path / "out" / "gpu" / "bench_gpu.json").read_text())
    aa = json.loads((tmp_path / "out" / "gpu" / "aa" / "bench_gpu.json").read_text())
    assert training["environment"]["smoke"] and aa["environment"]["smoke"]
    # the targets first: AdaAD and RSLAD at the batch and at 4x it (128 and 512 on a GPU; --smoke's 8 and 32)
    first = [(j["method"], j["batch_size"]) for j in training["training"]][:4]
    assert first == [("adaad", 8), ("rslad", 8), ("adaad", 32), ("rslad", 32)]
    assert {j["method"] for j in training["training"]} == {"adaad", "rslad", "pgd_at", "trades", "ciard"}
    assert aa["evaluation"] and not aa["training"]
