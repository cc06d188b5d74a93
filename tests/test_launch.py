"""Grid launchers: local processes with slots per GPU, and submitit (its local executor) with a killed run
resubmitted and resumed; the launcher's errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robust_distill.analysis import launch
from robust_distill.analysis.bench import check_grid, load_grid, run_grid
from robust_distill.analysis.launch import LocalLauncher
from robust_distill.cli import main
from robust_distill.errors import ConfigError, MissingDependencyError
from robust_distill.files.checkpoint import load_checkpoint

from .test_reliability import rows, same_weights, wait_for

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="the slurm extra (submitit) is not installed")

# Stands in for `train`: records the GPU and threads it was given and when it ran, then "finishes" the run.
FAKE_TRAIN = """import json, os, sys, time
from pathlib import Path
start = time.time()
time.sleep(2.0)
folder = Path(sys.argv[1])
(folder / "child.json").write_text(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "threads": os.environ["OMP_NUM_THREADS"], "start": start, "end": time.time()}))
(folder / "summary.json").write_text("{}")
"""


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of the ``(start, end)`` intervals that overlap at one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda t: (t[0], t[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def grid_of(tiny_raw, tmp_path: Path, **keys) -> dict:
    base = tiny_raw("pgd_at")
    base.pop("output_dir")
    return {"output_dir": str(tmp_path / "g"), "base": base, **keys}


def test_slots_per_gpu_run_k_at_once_on_each_visible_gpu(regs, tiny_raw, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the GPUs bench may use, as on a GPU machine
    monkeypatch.setattr(launch, "train_command", lambda folder, torchrun: [sys.executable, "-c", FAKE_TRAIN,
                                                                           str(folder)])
    grid = grid_of(tiny_raw, tmp_path, grid={"seed": list(range(7))}, launcher={"slots_per_gpu": 2})
    lines: list[str] = []
    states = run_grid(grid, regs, log=lines.append)
    assert set(states.values()) == {"done"}
    assert lines[0].endswith("local processes, 2 per GPU on GPU 3, 5 (4 at a time)")
    folders = [tmp_path / "g" / f"seed={i}" for i in range(7)]
    runs = [json.loads((f / "child.json").read_text()) for f in folders]
    # each run saw only its GPU; the first four were placed round robin; bench recorded the same GPU
    assert [r["gpu"] for r in runs[:4]] == ["3", "5", "3", "5"] and {r["gpu"] for r in runs} == {"3", "5"}
    assert [json.loads((f / "status.json").read_text())["gpu"] for f in folders] == [r["gpu"] for r in runs]
    assert {r["threads"] for r in runs} == {str(max(1, (os.cpu_count() or 1) // 4))}
    for gpu in ("3", "5"):  # never more than 2 runs on one GPU, and 2 while the first four ran
        assert most_at_once([(r["start"], r["end"]) for r in runs if r["gpu"] == gpu]) == 2
    assert most_at_once([(r["start"], r["end"]) for r in runs]) == 4

    # --parallel caps the total: 3 at a time over the 4 slots
    grid["output_dir"] = str(tmp_path / "g3")
    run_grid(grid, regs, parallel=3, log=lines.append)
    runs = [json.loads((tmp_path / "g3" / f"seed={i}" / "child.json").read_text()) for i in range(7)]
    assert most_at_once([(r["start"], r["end"]) for r in runs]) == 3
    assert max(most_at_once([(r["start"], r["end"]) for r in runs if r["gpu"] == g]) for g in "35") == 2


# Stands in for `train`: seed=0 is killed at its first start, seed=1 fails by itself, seed=2 finishes.
FLAKY_TRAIN = """import os, signal, sys
from pathlib import Path
folder = Path(sys.argv[1])
starts = folder / "starts"
starts.write_text(starts.read_text() + "x" if starts.exists() else "x")
if folder.name == "seed=0" and starts.read_text() == "x":
    os.kill(os.getpid(), signal.SIGKILL)
if folder.name == "seed=1":
    sys.exit(1)
(folder / "summary.json").write_text("{}")
"""


@pytest.mark.parametrize("resubmit", [2, 0])
def test_a_killed_run_is_started_again_a_failed_one_is_not(regs, tiny_raw, tmp_path: Path, resubmit: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "train_command", lambda folder, torchrun: [sys.executable, "-c", FLAKY_TRAIN,
                                                                           str(folder)])
    grid = grid_of(tiny_raw, tmp_path, grid={"seed": [0, 1, 2]}, launcher={"resubmit": resubmit})
    lines: list[str] = []
    states = run_grid(grid, regs, log=lines.append)
    starts = {name: len((tmp_path / "g" / name / "starts").read_text()) for name in states}
    status = {name: json.loads((tmp_path / "g" / name / "status.json").read_text()) for name in states}
    assert status["seed=1"]["state"] == "failed" and status["seed=1"]["returncode"] == 1 and starts["seed=1"] == 1
    assert status["seed=2"]["state"] == "done" and starts["seed=2"] == 1
    if resubmit:
        assert states["seed=0"] == "done" and starts["seed=0"] == 2 and status["seed=0"]["attempt"] == 2
        assert "  killed  seed=0 (SIGKILL): starting it again, from its last.pt" in lines
    else:
        assert status["seed=0"]["state"] == "failed" and status["seed=0"]["returncode"] == -signal.SIGKILL
        assert "  FAILED  seed=0 (SIGKILL); see " + str(tmp_path / "g" / "seed=0" / "train.log") in lines


def test_a_run_goes_to_the_gpu_with_fewest_runs_ties_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-5e1f,-1,3")  # CUDA stops reading at an invalid entry
    assert launch.visible_gpus() == ["2", "GPU-5e1f"]
    launcher = LocalLauncher(parallel=0, slots_per_gpu=2, gpus=["0", "1", "2"], threads=1)
    assert launcher.capacity == 6 and [launcher._place() for _ in range(4)] == ["0", "1", "2", "0"]
    launcher.active["1"] -= 1  # a run on GPU 1 ended: GPU 0 has 2 runs, 1 has none, 2 has 1
    assert launcher._place() == "1"  # the fewest
    assert launcher._place() == "2"  # 1 and 2 tie: the next after 1
    assert LocalLauncher(parallel=4, slots_per_gpu=2, gpus=["0", "1", "2"], threads=1).capacity == 4
    assert LocalLauncher(parallel=2, threads=1).describe() == "local processes, 2 at a time"


def test_bad_launchers_are_reported_with_the_valid_choices(regs, tiny_raw, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    grid = grid_of(tiny_raw, tmp_path, grid={"seed": [0]}, torchrun=2,
                   launcher={"name": "slurm", "cluster": "aws", "slots_per_gpu": 2, "resubmit": -1, "slurm": "gpu",
                             "gpus": [0]})
    with pytest.raises(ConfigError) as info:
        check_grid(grid)
    assert info.value.problems == [
        "launcher.gpus: unknown launcher key; valid keys: cluster, name, resubmit, slots_per_gpu, slurm.",
        "launcher.name: 'slurm' is not a launcher; valid: local, submitit.",
        "launcher.cluster: 'aws' is not a submitit cluster; valid: slurm, local.",
        "launcher.slots_per_gpu: places single-GPU runs, but torchrun: 2 gives each run several GPUs; drop one "
        "of the two.",
        "launcher.resubmit: must be an integer >= 0, got -1.",
        "launcher.slurm: must be a mapping of Slurm resources (partition, time, gpus_per_node, cpus_per_task, mem, "
        "...), got 'gpu'."]
    with pytest.raises(ConfigError, match=r"launcher: must be a launcher name \(local, submitit\)"):
        check_grid({**grid, "launcher": 4, "torchrun": None})

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="2 runs per GPU, but no GPU is visible"):
        run_grid({**grid, "torchrun": None, "launcher": {"slots_per_gpu": 2}}, regs, dry_run=True)
    assert not (tmp_path / "g").exists()  # a dry run writes nothing


@needs_submitit
def test_bad_submitit_launchers_are_reported_before_anything_starts(regs, tiny_raw, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    grid = grid_of(tiny_raw, tmp_path, grid={"seed": [0]})
    submitit_grid = {**grid, "launcher": {"name": "submitit", "slurm": {"partiton": "gpu"}}}
    with pytest.raises(ConfigError) as info:
        run_grid(submitit_grid, regs, dry_run=True)
    assert info.value.problems[0].startswith("launcher.slurm.partiton: not a Slurm resource of submitit's "
                                             "SlurmExecutor; valid: account, additional_parameters, array_parallelism")
    assert "partition" in info.value.problems[0] and "time limit of each job (minutes) is required" in str(info.value)
    if shutil.which("srun") is None:
        assert info.value.problems[2].startswith("launcher.cluster: slurm, but Slurm's `srun` is not found")
    assert not (tmp_path / "g").exists()  # a dry run writes nothing

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**grid, "launcher": "submitit"}))
    assert main(["bench", str(path), "--launcher", "submitit", "--slots-per-gpu", "2", "--dry-run"]) == 2
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'robust-distill\[slurm\]'"):
        run_grid(load_grid(path), regs, dry_run=True)


@needs_submitit
@pytest.mark.slow
def test_submitit_local_executor_resubmits_a_killed_run_which_resumes(regs, tiny_raw, tmp_path: Path) -> None:
    """A 4-run grid through submitit's local executor; one run's train is killed mid-run, resubmitted, and
    ends equal to an uninterrupted run; the report is written when the runs have ended."""
    grid = grid_of(tiny_raw, tmp_path, grid={"method": ["pgd_at", "trades"], "seed": [0, 1]}, report=True,
                   launcher={"name": "submitit", "cluster": "local", "slurm": {"time": 30}})
    grid["base"]["optim"]["epochs"] = 6
    grid["base"]["data"]["options"]["n_train"] = 384
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    env = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    bench = subprocess.Popen([sys.executable, "-m", "robust_distill", "bench", str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    victim = tmp_path / "g" / "method=pgd_at,seed=0"
    try:
        wait_for(lambda: (victim / "last.pt").is_file() or bench.poll() is not None, 600, "the run's first epoch")
        status = json.loads((victim / "status.json").read_text())
        os.kill(status["pid"], signal.SIGKILL)  # its train process, inside the submitit job
        killed_after = load_checkpoint(victim / "last.pt")["epoch"]
        out, _ = bench.communicate(timeout=900)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGTERM)
            bench.wait()
    log = out.decode()
    assert bench.returncode == 0, log
    assert status["state"] == "running" and status["job_id"]
    killed_at = [line for line in log.splitlines() if "killed  method=pgd_at,seed=0" in line]
    assert killed_at == ["  killed  method=pgd_at,seed=0 (SIGKILL): starting it again, from its last.pt"]
    final = json.loads((victim / "status.json").read_text())
    assert final["state"] == "done" and final["attempt"] == 2 and final["job_id"] != status["job_id"]
    assert all(json.loads((f / "status.json").read_text())["state"] == "done" for f in (tmp_path / "g").glob("m*"))
    assert 1 <= killed_after < 6 and [r["epoch"] for r in rows(victim)] == list(range(6))  # resumed: each once
    train_log = (victim / "train.log").read_text()
    assert all(train_log.count(f"epoch {e}/6 train_loss") == 1 for e in range(1, 7))
    assert (tmp_path / "g" / "report.md").is_file() and "trades" in (tmp_path / "g" / "report.md").read_text()

    # the same run, uninterrupted
    raw = yaml.safe_load((victim / "run.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "uninterrupted")
    (tmp_path / "uninterrupted.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "uninterrupted.yaml")]) == 0
    assert rows(victim) == rows(tmp_path / "uninterrupted")
    for name in ("last.pt", "best.pt"):
        same_weights(victim / name, tmp_path / "uninterrupted" / name)
    assert load_checkpoint(victim / "last.pt")["epoch"] == 6
