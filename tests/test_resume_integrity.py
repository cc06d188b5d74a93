"""Resume integrity (issue 24): a shorter ``optim.epochs`` on resume, an I/O error mid-run, an empty or
truncated checkpoint. Each test failed on bb653c1.

A read-only file system is simulated by making ``os.open`` (for writing), ``os.unlink``, ``os.rename`` and
``os.replace`` raise ``EROFS`` for paths inside the run's folder, as the kernel does once a file system is
remounted read-only: reads still work, every write fails.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from robust_distill.cli import main
from robust_distill.engine import trainer
from robust_distill.errors import CheckpointError
from robust_distill.files.checkpoint import load_checkpoint

from .test_reliability import rows, write_config


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


# -- 1. a shorter optim.epochs on resume ------------------------------------------------------------------


def test_resume_with_fewer_epochs_than_last_pt_holds_is_refused(tiny_raw, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at", eval={"n_examples": 32, "attacks": ["clean"], "select": "clean"})
    raw["optim"]["epochs"] = 3
    config = write_config(tmp_path / "c.yaml", raw)
    out = Path(raw["output_dir"])
    assert main(["train", str(config), "--set", "optim.epochs=2"]) == 0  # last.pt holds epoch 2
    capsys.readouterr()
    before = _snapshot(out)
    for check in ([], ["--check"]):
        assert main(["train", str(config), "--set", "optim.epochs=1", *check]) == 2
        err = capsys.readouterr().err
        assert "optim.epochs: 1" in err and "2 epochs" in err and str(out / "last.pt") in err, err
        assert "optim.epochs to 2 or more" in err and "--no-resume" in err and "Traceback" not in err, err
        assert _snapshot(out) == before  # refused before anything was written
    # as many epochs as last.pt holds: the finished run is evaluated again, under its true budget
    assert main(["train", str(config), "--set", "optim.epochs=2"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 2
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and [r["epoch"] for r in rows(out)] == [0, 1]
    # --no-resume starts over with the shorter budget: every file then says 1
    assert main(["train", str(config), "--set", "optim.epochs=1", "--no-resume"]) == 0
    capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and [r["epoch"] for r in rows(out)] == [0]


# -- 2. an I/O error mid-run -------------------------------------------------------------------------------


class ReadOnly:
    """Once ``on`` is set, every write below ``folder`` fails with EROFS (a file system remounted read-only)."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder, self.on = str(folder.resolve()), False
        for name in ("open", "unlink", "rename", "replace", "rmdir", "mkdir"):
            monkeypatch.setattr(os, name, self._guard(name, getattr(os, name)))

    def _guard(self, name: str, real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            write = name != "open" or (args[0] if args else kwargs.get("flags", 0)) & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if self.on and write and os.path.abspath(os.fspath(path)).startswith(self.folder):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real(path, *args, **kwargs)
        return call


def test_an_io_error_mid_run_names_the_file_and_says_train_resumes(tiny_raw, tmp_path: Path, monkeypatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at", eval={"n_examples": 32, "attacks": ["clean"], "select": "clean"})
    config = write_config(tmp_path / "c.yaml", raw)
    out = Path(raw["output_dir"])
    assert main(["train", str(config), "--set", "optim.epochs=1"]) == 0
    good = (out / "last.pt").read_bytes()
    capsys.readouterr()
    read_only = ReadOnly(out, monkeypatch)
    real_epoch = trainer._train_epoch

    def epoch_then_remount(run: Any, epoch: int) -> dict[str, float]:
        metrics = real_epoch(run, epoch)
        read_only.on = True  # between the epoch's training and its first file
        return metrics

    monkeypatch.setattr(trainer, "_train_epoch", epoch_then_remount)
    assert main(["train", str(config)]) == 3
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err, err
    assert ".lock" not in err and ".tmp" not in err, err  # the write that failed, not the lock or a temp name
    assert any(f"{str(out / name)!r}" in err for name in ("best.pt", "metrics.jsonl")), err
    assert "`train` resumes from the last finished epoch" in err and "epoch 1" in err, err
    assert (out / "last.pt").read_bytes() == good
    read_only.on = False
    monkeypatch.setattr(trainer, "_train_epoch", real_epoch)
    assert main(["train", str(config)]) == 0  # writable again: the same command finishes the run
    assert [r["epoch"] for r in rows(out)] == [0, 1]


# -- 3. an empty or truncated checkpoint ----------------------------------------------------------------------


def test_an_empty_or_truncated_checkpoint_is_named_as_such(tiny_raw, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    raw = tiny_raw("pgd_at", eval={"n_examples": 32, "attacks": ["clean"], "select": "clean"})
    config = write_config(tmp_path / "c.yaml", raw)
    out = Path(raw["output_dir"])
    assert main(["train", str(config), "--set", "optim.epochs=1"]) == 0
    capsys.readouterr()
    good = (out / "last.pt").read_bytes()
    n = len(good)
    cases = {b"": "it is empty (0 bytes)", good[:100]: "it is truncated at 100 bytes",
             good[:n // 2]: f"it is truncated at {n // 2} bytes", good[:-10]: f"it is truncated at {n - 10} bytes"}
    for data, reason in cases.items():
        (out / "last.pt").write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(reason)):
            load_checkpoint(out / "last.pt")
        assert main(["train", str(config)]) == 3
        err = capsys.readouterr().err
        assert reason in err and str(out / "last.pt") in err and "--no-resume" in err, err
        assert "Traceback" not in err and ": ." not in err, err
    (out / "last.pt").write_bytes(b"<html>404</html>")  # not cut short: torch's reason, as before
    with pytest.raises(CheckpointError, match="Could not read") as info:
        load_checkpoint(out / "last.pt")
    assert "truncated at" not in str(info.value) and "0 bytes" not in str(info.value)
