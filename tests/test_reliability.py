"""Resume, concurrency and bad input (issue 9, items 5-15): one test (or more) per item, each one failing on
the code before the fix.

Kills are simulated three ways: ``train(..., stop_after_epochs=N)`` (the process's work ends between epochs),
an exception raised right after a chosen ``os.replace`` of the atomic writers (a kill at that instant: the
files on disk are exactly what a ``kill -9`` would leave), and real signals to real processes (torchrun,
``bench``).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from robust_distill.analysis.bench import GridRun
from robust_distill.cli import main
from robust_distill.engine.trainer import train
from robust_distill.files import atomic as _io
from robust_distill.files.checkpoint import load_checkpoint

from .conftest import write_teacher_checkpoint

ENV = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
LINUX = sys.platform.startswith("linux")


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def rows(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the timings (which differ between two runs of the same thing)."""
    out = [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in out]


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k}: max |delta| {(sa[k].double() - sb[k].double()).abs().max():.3g}"


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- item 5: exact resume under torchrun with BatchNorm ------------------------------------------------

STOP_AFTER = """\
import sys
from robust_distill.config import load_config
from robust_distill.core.manager import get_registries
from robust_distill.engine.trainer import train
train(load_config(sys.argv[1], get_registries()), stop_after_epochs=int(sys.argv[2]))
"""


@pytest.mark.slow
def test_torchrun_bn_student_killed_and_resumed_equals_uninterrupted(tiny_raw, tmp_path: Path) -> None:
    """2 gloo processes, a BatchNorm student: BN running statistics are averaged over the processes at every
    epoch end, so the checkpoint holds what every rank uses and a resumed run is the uninterrupted one."""
    raw = tiny_raw("pgd_at")
    raw["optim"]["epochs"] = 2
    script = tmp_path / "stop_after.py"
    script.write_text(STOP_AFTER)
    configs = {}
    for name in ("full", "part"):
        raw["output_dir"] = str(tmp_path / name)
        configs[name] = write_config(tmp_path / f"{name}.yaml", raw)

    def run(*args: str) -> None:
        proc = subprocess.run([*TORCHRUN, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("-m", "robust_distill", "train", str(configs["full"]))
    run(str(script), str(configs["part"]), "1")
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    run("-m", "robust_distill", "train", str(configs["part"]))
    same_weights(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    assert rows(tmp_path / "full") == rows(tmp_path / "part")
    assert any("running_var" in k for k in load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"])


def test_average_buffers_averages_float_buffers_and_keeps_integers() -> None:
    """Outside torchrun it is the identity; the averaging itself runs in the torchrun test above."""
    from robust_distill.engine.distributed import average_buffers

    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(2.0)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    average_buffers(bn)
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())


# -- item 6: no kill point loses a metrics row ----------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the engine handles it."""


@pytest.mark.slow
def test_a_kill_right_after_any_rename_loses_no_data(tiny_config, tmp_path: Path, monkeypatch) -> None:
    over = ["optim.epochs=2", "eval.train_records=16"]
    reference = tiny_config("pgd_at", overrides=[*over, f"output_dir={tmp_path / 'reference'}"])
    renames: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(_io.os, "replace", lambda a, b: (renames.append(Path(b).name), real_replace(a, b))[1])
    train(reference)
    monkeypatch.setattr(_io.os, "replace", real_replace)
    assert {"last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json"} <= set(renames)

    for k in range(1, len(renames)):  # kill right after the k-th rename, then resume
        out = tmp_path / f"killed-after-{k}-{renames[k - 1]}"
        cfg = tiny_config("pgd_at", overrides=[*over, f"output_dir={out}"])
        count = [0]

        def replace_then_die(a: str, b: str) -> None:
            real_replace(a, b)
            count[0] += 1
            if count[0] == k:
                raise Killed(b)

        monkeypatch.setattr(_io.os, "replace", replace_then_die)
        with pytest.raises(Killed):
            train(cfg)
        monkeypatch.setattr(_io.os, "replace", real_replace)
        train(cfg)
        assert rows(out) == rows(tmp_path / "reference"), f"killed after rename {k} ({renames[k - 1]})"
        same_weights(out / "last.pt", tmp_path / "reference" / "last.pt")
        csv_lines = (out / "metrics.csv").read_text().splitlines()
        assert len(csv_lines) == 3 and csv_lines[0].startswith("epoch,")


# -- item 7: temp files of interrupted writes are removed -----------------------------------------------


def test_temp_files_of_interrupted_writes_are_removed_on_start(tiny_config) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean"])
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    stale = [out / ".last.pt.k2j_3hgq.tmp", out / ".metrics.jsonl.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    mine = out / ".notes.tmp"  # not a name the atomic writers make: left alone
    mine.write_text("keep me")
    train(cfg)
    assert not any(p.exists() for p in stale) and mine.read_text() == "keep me"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") and p != mine]


# -- item 8: one process per output folder --------------------------------------------------------------


def _start_train(config: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    with open(config.with_suffix(".log"), "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "robust_distill", "train", str(config)], cwd=tmp_path,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_is_refused_naming_the_holder(tiny_raw, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at")
    raw["optim"]["epochs"] = 500
    config = write_config(tmp_path / "c.yaml", raw)
    out = Path(raw["output_dir"])
    first = _start_train(config, tmp_path)
    try:
        wait_for(lambda: (out / "last.pt").is_file() or first.poll() is not None, 300, "the first run's epoch")
        assert first.poll() is None, config.with_suffix(".log").read_text()[-2000:]
        before = load_checkpoint(out / "last.pt")["epoch"]
        assert main(["train", str(config)]) == 3
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and str(out) in err and "Traceback" not in err
        assert main(["train", str(config), "--no-resume"]) == 3  # --no-resume does not take it over either
        assert f"PID {first.pid}" in capsys.readouterr().err
        wait_for(lambda: load_checkpoint(out / "last.pt")["epoch"] > before, 120, "the first run to go on")
    finally:
        _stop(first)
    assert main(["train", str(config), "--set", "optim.epochs=1", "--no-resume"]) == 0  # free once it is gone


def _long_grid(tiny_raw: Callable[..., dict[str, Any]], tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """A grid of one long run: (its base config, the grid file, the run's folder)."""
    base = tiny_raw("pgd_at")
    base.pop("output_dir")
    base["optim"]["epochs"] = 500
    grid = write_config(tmp_path / "grid.yaml", {"output_dir": str(tmp_path / "g"), "base": base,
                                                 "grid": {"seed": [0]}})
    return base, grid, tmp_path / "g" / "seed=0"


@pytest.mark.slow
def test_bench_refuses_to_start_while_a_run_or_the_grid_is_busy(tiny_raw, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    base, grid, run_dir = _long_grid(tiny_raw, tmp_path)
    # a child of a killed bench, still training the grid's run
    orphan_raw = {**base, "output_dir": str(run_dir)}
    orphan = _start_train(write_config(tmp_path / "orphan.yaml", orphan_raw), tmp_path)
    try:
        wait_for(lambda: (run_dir / "last.pt").is_file() or orphan.poll() is not None, 300, "the orphan's epoch")
        assert orphan.poll() is None, (tmp_path / "orphan.log").read_text()[-2000:]
        assert main(["bench", str(grid)]) == 3
        err = capsys.readouterr().err
        assert "seed=0" in err and f"PID {orphan.pid}" in err and "Traceback" not in err
        assert not (run_dir / "status.json").exists()  # nothing of the orphan's folder was touched
    finally:
        _stop(orphan)
    # a second bench on a grid folder that a live bench holds
    bench = subprocess.Popen([sys.executable, "-m", "robust_distill", "bench", str(grid)], cwd=tmp_path, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: GridRun("seed=0", {}, run_dir).status().get("bench_pid") == bench.pid, 300,
                 "the grid's run to start")
        assert main(["bench", str(grid)]) == 3
        err = capsys.readouterr().err
        assert f"PID {bench.pid}" in err and "Traceback" not in err
    finally:
        _stop(bench)


# -- item 9: resume checks that last.pt belongs to this config ------------------------------------------


def test_resume_refuses_a_checkpoint_of_another_config(tiny_raw, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at")
    raw["optim"]["epochs"] = 2
    config = write_config(tmp_path / "c.yaml", raw)
    from robust_distill.config import load_config
    from robust_distill.core.manager import get_registries

    assert train(load_config(config, get_registries()), stop_after_epochs=1)["interrupted"]
    last = Path(raw["output_dir"]) / "last.pt"
    stamp = last.stat().st_mtime_ns
    assert main(["train", str(config), "--set", "seed=1", "--set", "optim.lr=0.2"]) == 2
    err = capsys.readouterr().err
    assert "seed: 0 -> 1" in err and "optim.lr: 0.05 -> 0.2" in err and "--no-resume" in err
    assert main(["train", str(config), "--set", "student=timm:convnet_s"]) == 2  # was a raw size mismatch
    err = capsys.readouterr().err
    assert "student.key: 'timm:convnet_xs' -> 'timm:convnet_s'" in err and "Traceback" not in err
    assert last.stat().st_mtime_ns == stamp  # refused before anything was written
    # what may differ on resume: more epochs, evaluation settings, the device
    assert main(["train", str(config), "--set", "optim.epochs=3", "--set", "eval.n_examples=16",
                 "--set", "device=auto"]) == 0
    assert [r["epoch"] for r in rows(Path(raw["output_dir"]))] == [0, 1, 2]


def test_resume_accepts_keys_a_newer_version_added_at_their_default() -> None:
    """A run started before a key existed resumes when the key has its default (the behaviour it trained with)."""
    from robust_distill.config import config_differences

    old = {"seed": 0, "optim": {"lr": 0.1}}
    assert config_differences(old, {"seed": 0, "optim": {"lr": 0.1, "precision": "fp32"}, "swa": {"start": None},
                                    "save_epochs": []}) == []
    assert config_differences(old, {"seed": 0, "optim": {"lr": 0.1, "precision": "bf16"}}) == [
        "optim.precision: (unset) -> 'bf16'"]
    assert config_differences(old, {"seed": 0, "optim": {"lr": 0.2}}) == ["optim.lr: 0.1 -> 0.2"]


# -- item 10: no orphaned children ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="parent-death signals are Linux-only")
def test_killing_the_torchrun_launcher_stops_its_workers(tiny_raw, tmp_path: Path) -> None:
    raw = tiny_raw("pgd_at")
    raw["optim"]["epochs"] = 500
    config = write_config(tmp_path / "c.yaml", raw)
    launcher = subprocess.Popen([*TORCHRUN, "-m", "robust_distill", "train", str(config)], cwd=tmp_path, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    try:
        wait_for(lambda: (Path(raw["output_dir"]) / "last.pt").is_file() or launcher.poll() is not None, 300,
                 "the first epoch")
        workers = children(launcher.pid)  # torchrun starts each worker in a session of its own
        assert len(workers) == 2 and all(alive(p) for p in workers)
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone
        launcher.wait()
        wait_for(lambda: not any(alive(p) for p in workers), 30, "the workers to stop")
    finally:
        _stop(launcher)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="parent-death signals are Linux-only")
def test_killing_bench_stops_its_children_and_no_dead_run_reads_as_running(tiny_raw, tmp_path: Path) -> None:
    _, grid, run_dir = _long_grid(tiny_raw, tmp_path)
    run = GridRun("seed=0", {}, run_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        (run_dir / "last.pt").unlink(missing_ok=True)
        bench = subprocess.Popen([sys.executable, "-m", "robust_distill", "bench", str(grid)], cwd=tmp_path, env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: (run_dir / "last.pt").is_file() or bench.poll() is not None, 300, "the run's epoch")
            kids = [p for p in children(bench.pid) if alive(p)]
            assert kids and run.status()["state"] == "running"
            os.kill(bench.pid, sig)  # bench alone, not its process group
            bench.wait()
            wait_for(lambda: not any(alive(p) for p in kids), 30, f"bench's children to stop after {sig.name}")
            assert run.status()["state"] == "interrupted", (sig.name, run.status())
        finally:
            _stop(bench)


# -- item 11: train --check catches what train would fail on --------------------------------------------


def _teacher_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"teacher-{kind}.pt"
    if kind == "text":
        path.write_text("<html>Not found</html>\n")
    elif kind in ("truncated", "other_shape", "good"):
        from robust_distill.core.components import DatasetInfo

        info = DatasetInfo("synthetic", 4, (1, 8, 8) if kind == "other_shape" else (3, 8, 8))
        write_teacher_checkpoint(path, "timm:convnet_xs", {}, info)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
    elif kind == "pickle":
        torch.save({"state_dict": {}, "args": Killed}, path)  # pickles a class: refused by weights_only
    return path


CHECK_CASES = {
    "truncated teacher file": ({"teachers": {"robust": "checkpoint:{truncated}"}, "method": "rslad"},
                               "teachers.robust"),
    "text teacher file": ({"teachers": {"robust": "checkpoint:{text}"}, "method": "rslad"}, "teachers.robust"),
    "pickle teacher file": ({"teachers": {"robust": "checkpoint:{pickle}"}, "method": "rslad"}, "teachers.robust"),
    "teacher of another input shape": ({"teachers": {"robust": "checkpoint:{other_shape}"}, "method": "rslad"},
                                       "(3, 8, 8)"),
    "val_size larger than the dataset": ({"data": {"val_size": 96}}, "data.val_size"),
    "negative lr": ({"optim": {"lr": -0.1}}, "optim.lr"),
    "cuda:7": ({"device": "cuda:7"}, "device"),
    "output_dir not a folder": ({"output_dir": "{file}"}, "output_dir"),
    "output_dir not writable": ({"output_dir": "/proc/robust-distill-run"}, "output_dir"),
}


@pytest.mark.parametrize("case", CHECK_CASES)
def test_train_check_catches_what_train_would_fail_on(case: str, tiny_raw, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    if case == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    change, expected = CHECK_CASES[case]
    raw = tiny_raw("pgd_at")
    files = {k: str(_teacher_file(tmp_path, k)) for k in ("truncated", "text", "pickle", "other_shape")}
    (tmp_path / "a_file").write_text("")
    files["file"] = str(tmp_path / "a_file")
    for key, value in change.items():
        if isinstance(value, dict) and key in raw and isinstance(raw[key], dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    text = yaml.safe_dump(raw)
    for k, v in files.items():
        text = text.replace("{" + k + "}", v)
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code = main(["train", str(config), "--check"])
    err = capsys.readouterr().err
    assert code in (2, 3), err
    assert expected in err and "Traceback" not in err


def test_a_remembered_teacher_check_is_redone_when_the_file_changes(tiny_raw, regs, tmp_path: Path) -> None:
    """A grid checks many runs with one teacher (read and built on ``meta`` once); a changed file is re-read."""
    from robust_distill.config import resolve_config
    from robust_distill.errors import ConfigError

    path = tmp_path / "teacher.pt"
    _io.atomic_save(load_checkpoint(_teacher_file(tmp_path, "other_shape")), path)
    raw = {**tiny_raw("rslad", teacher=True), "teachers": {"robust": f"checkpoint:{path}"}}
    with pytest.raises(ConfigError, match="does not accept this dataset's inputs"):
        resolve_config(raw, regs)
    _io.atomic_save(load_checkpoint(_teacher_file(tmp_path, "good")), path)  # same path, another file
    assert resolve_config(raw, regs).teachers["robust"].key == f"checkpoint:{path}"


# -- item 12: eval flags ----------------------------------------------------------------------------------

EVAL_CASES = {
    "--eps 2": (["--eps", "2"], "--eps"),
    "--eps=-1": (["--eps=-1"], "--eps"),
    "--eps abc": (["--eps", "abc"], "--eps"),
    "--n-examples=-5": (["--n-examples=-5"], "--n-examples"),
    "--attacks ''": (["--attacks", ""], "--attacks"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size"),
    "--out a folder": (["--out", "{tmp}"], "--out"),
}


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_flags_are_validated(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags, expected = EVAL_CASES[case]
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    code = main(["eval", "timm:convnet_xs", "--dataset", "synthetic", "--attacks", "clean", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model,expected", [("timm:resnet_nope", "timm has no model 'resnet_nope'"),
                                            ("robustbench:Chen2021LTD_WRN34_1", "Chen2021LTD_WRN34_10")])
def test_eval_unknown_zoo_names_are_errors_not_tracebacks(model: str, expected: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", model, "--dataset", "cifar10", "--attacks", "clean"]) == 3
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


# -- item 13: inputs that were silently accepted -------------------------------------------------------


def test_duplicate_yaml_keys_are_an_error(tiny_raw, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = yaml.safe_dump(tiny_raw("pgd_at")) + "seed: 3\n"  # `seed: 0` is already there
    (tmp_path / "c.yaml").write_text(text)
    assert main(["train", str(tmp_path / "c.yaml"), "--check"]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'seed'" in err and "line" in err


def test_empty_output_dir_is_an_error(tiny_raw, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**tiny_raw("pgd_at"), "output_dir": ""}))
    assert main(["train", str(tmp_path / "c.yaml"), "--check"]) == 2
    assert "output_dir" in capsys.readouterr().err


@pytest.mark.parametrize("change,expected", [
    ({"exclude": [{"seeed": 0}]}, ["exclude[0].seeed", "the grid's keys: seed"]),
    ({"exclude": [{"seed": 7}]}, ["exclude[0].seed: 7 is none of the grid's values for seed (0, 1)"]),
    ({"parallel": -2}, ["parallel: must be null or an integer >= 1, got -2"]),
])
def test_bench_grid_mistakes_are_errors(change: dict, expected: list[str], tiny_raw, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_raw("pgd_at")
    base.pop("output_dir")
    grid = write_config(tmp_path / "grid.yaml", {"output_dir": str(tmp_path / "g"), "base": base,
                                                 "grid": {"seed": [0, 1]}, **change})
    assert main(["bench", str(grid), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err
    assert not (tmp_path / "g").exists()


# -- item 14: a full disk, a corrupt summary, a closed pipe, a folder as config -------------------------


def test_a_full_disk_is_a_message_and_the_last_checkpoint_stays(tiny_raw, tmp_path: Path, monkeypatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at")
    raw["optim"]["epochs"] = 2
    config = write_config(tmp_path / "c.yaml", raw)
    out = Path(raw["output_dir"])
    assert main(["train", str(config), "--set", "optim.epochs=1"]) == 0
    good = (out / "last.pt").read_bytes()
    capsys.readouterr()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f: Any) -> None:
            self.f = f

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.f.close()

    monkeypatch.setattr(_io.os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real_fdopen(fd, mode, *a, **k)))
    assert main(["train", str(config)]) == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and str(out) in err
    assert (out / "last.pt").read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_report_names_a_corrupt_summary(tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean",
                                           f"output_dir={tmp_path / 'runs' / 'a'}"])
    train(cfg)
    summary = tmp_path / "runs" / "a" / "summary.json"
    summary.write_text(summary.read_text()[:40])
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 3
    err = capsys.readouterr().err
    assert str(summary) in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "report.md").exists()


@pytest.mark.slow
def test_train_into_a_closed_pipe_exits_quietly(tiny_raw, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_raw("pgd_at"))
    proc = subprocess.Popen([sys.executable, "-m", "robust_distill", "train", str(config), "--check"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # type: ignore[union-attr]  # `| head -0`: the reader is gone before the first line
    with proc.stderr:  # type: ignore[union-attr]
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.wait(timeout=300) == 141 and err == ""


def test_a_config_path_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err


# -- item 15: files get the umask's mode ------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_files_are_created_with_the_umask_mode(umask: int, tiny_config) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean"])
    old = os.umask(umask)
    try:
        train(cfg)
    finally:
        os.umask(old)
    files = [p for p in Path(cfg.output_dir).iterdir() if p.is_file()]
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "summary.json"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name
