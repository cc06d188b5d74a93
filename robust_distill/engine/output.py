"""A run's output folder: one process owns it (a lock), and what is in it decides whether a run resumes
(:func:`check_resumable` refuses what a resume cannot honour, before any work).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from robust_distill.config import Config, ResumeMismatchError, config_differences, config_to_dict, plain_data
from robust_distill.engine.distributed import (
    DistContext,
)
from robust_distill.errors import CheckpointError, ConfigError, WriteError
from robust_distill.files.atomic import remove_stale_temp_files
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill.files.lock import FolderLock, FolderLockedError


@contextmanager
def _own_output_dir(out: Path, dist_ctx: DistContext, resume: bool = True) -> Iterator[None]:
    """Rank 0 holds the folder's lock for the whole run (every rank fails together when another process holds
    it), then removes the temp files that writes interrupted by a kill left behind. A write that fails says
    what the same command will do next (:func:`_resumes_from`)."""
    lock = FolderLock(out, "output_dir")
    holder = None
    if dist_ctx.is_main:
        try:
            lock.acquire()
        except FolderLockedError as exc:
            holder = exc.holder or {"pid": "?"}
    holder = dist_ctx.broadcast(holder)
    if holder is not None:
        raise FolderLockedError(out, holder, "output_dir")
    try:
        if dist_ctx.is_main:
            removed = remove_stale_temp_files(out)
            if removed:
                print(f"robust-distill: removed {len(removed)} temp file(s) that interrupted writes left in {out}: "
                      f"{', '.join(removed)}", file=sys.stderr, flush=True)
        yield
    except WriteError as exc:
        then = _resumes_from(out) if resume else ("The same command (--no-resume) starts over; without "
                                                   "--no-resume, `train` resumes from the last finished epoch")
        raise type(exc)(exc.errno, f"{exc} {then}.", exc.filename) from exc
    finally:
        lock.release()


def _resumes_from(out: Path) -> str:
    """What ``train`` does after a failure, from what ``out/last.pt`` holds (it commits each epoch)."""
    last = out / "last.pt"
    try:
        epoch = int(load_checkpoint(last, mmap=True)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return "No epoch was finished: `train` starts over"
    return f"`train` resumes from the last finished epoch (epoch {epoch}, in {str(last)!r})"


_NO_RESUME = ("start over with --no-resume (the folder's checkpoints and metrics are overwritten) or use another "
              "output_dir")


def check_resumable(cfg: Config) -> None:
    """What ``train(cfg)`` checks before resuming ``output_dir/last.pt`` (nothing when there is none).

    Refused: a ``last.pt`` written by another configuration (up to
    :data:`~robust_distill.config.RESUME_MAY_DIFFER`), or one holding more epochs than ``optim.epochs``: its
    weights cannot lose epochs, and the run's files would state a budget other than the one that produced them.
    """
    last = Path(cfg.output_dir) / "last.pt"
    if not last.is_file():
        return
    try:
        ckpt = load_checkpoint(last, mmap=True)
    except CheckpointError as exc:
        raise type(exc)(f"{exc} To train in this folder anyway, {_NO_RESUME}.") from exc
    stored = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"{str(last)!r} holds no config, so it cannot be resumed safely: {_NO_RESUME}.")
    diffs = config_differences(stored, plain_data(config_to_dict(cfg)))
    if diffs:
        raise ResumeMismatchError(last, diffs)
    done, epochs = ckpt.get("epoch"), cfg.optim.epochs
    if isinstance(done, int) and epochs < done:
        budget = stored.get("optim", {}).get("epochs", done)
        of = f" (of the {budget} its run was set to)" if budget != done else ""
        raise ConfigError([f"optim.epochs: {epochs} is fewer than the {done} epochs {str(last)!r} holds{of}. Its "
                           f"weights cannot lose epochs, and resuming would record a budget of {epochs} for them. "
                           f"Set optim.epochs to {done} or more ({done}: the finished run is evaluated again), or "
                           f"{_NO_RESUME}."], f"resume from {str(last)!r}")
