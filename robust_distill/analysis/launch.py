"""How ``bench`` starts a grid's runs: a launcher, chosen by the grid file's ``launcher:`` or ``bench --launcher``.

Every run is the same ``robust-distill train <run folder>/run.yaml`` process (under ``torchrun`` with
``torchrun: N``); a launcher only decides where and when it runs:

- ``local`` (the default): child processes of ``bench``, ``parallel`` at a time. With ``slots_per_gpu: K``,
  K runs at a time on each visible GPU (``CUDA_VISIBLE_DEVICES`` of ``bench``, else every GPU torch sees),
  each run given its GPU as ``CUDA_VISIBLE_DEVICES``, placed on the GPU with the fewest runs (ties: round
  robin); ``parallel``, when set, caps the total.
- ``submitit``: one job per run through `submitit <https://github.com/facebookincubator/submitit>`_
  (``pip install 'robust-distill[slurm]'``): ``cluster: slurm`` submits to Slurm with the resources of
  ``slurm:`` (the keys of submitit's ``SlurmExecutor``: ``partition``, ``time`` in minutes, ``gpus_per_node``,
  ``cpus_per_task``, ``mem``, ``account``, ``qos``, ``constraint``, ``additional_parameters``, ...);
  ``cluster: local`` runs the jobs on this machine with submitit's local executor (``time`` is its time limit).
  A job preempted or timed out on Slurm is requeued by submitit (the job is checkpointable) and its ``train``
  resumes from ``last.pt``.

With either launcher, a run whose process was killed (a signal, an exit code above 128, or a job lost with
its node) is started again, up to ``resubmit`` times (default 2), and resumes from its ``last.pt``; a run that
failed by itself (exit code 1-4: a bad config, a diverged run, ...) is not. Each launcher ignores the other's
keys, so one grid file can hold both (``bench --launcher submitit`` on the cluster, local runs elsewhere).

::

    launcher: local                      # or a mapping:
    launcher:
      name: submitit                     # local | submitit
      cluster: slurm                     # submitit: slurm | local
      slurm: {partition: gpu, time: 240, gpus_per_node: 1, cpus_per_task: 8, mem: 32G}
      slots_per_gpu: null                # local: runs at a time per GPU
      resubmit: 2                        # restarts of a killed run
"""

from __future__ import annotations

import abc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robust_distill._compat import import_optional
from robust_distill.engine.processes import guarded
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_write_json

__all__ = ["LAUNCHERS", "Launcher", "LocalLauncher", "SubmititLauncher", "Started", "TrainJob", "launcher_problems",
           "make_launcher", "killed", "signal_name", "train_command", "visible_gpus"]

LAUNCHERS = ("local", "submitit")
CLUSTERS = ("slurm", "local")
LAUNCHER_KEYS = {"name", "slots_per_gpu", "resubmit", "cluster", "slurm"}
#: submitit's SlurmExecutor parameters that are its own business
_INTERNAL_SLURM_KEYS = {"map_count", "num_gpus", "job_name"}
_NO_LIMIT_MIN = 60 * 24 * 365  # the local executor's time limit when ``slurm.time`` is not given


def _spec(launcher: Any) -> dict[str, Any]:
    """The grid's ``launcher:`` as a mapping (a bare name is ``{name: <name>}``)."""
    if launcher is None:
        return {}
    return {"name": launcher} if isinstance(launcher, str) else dict(launcher)


def _count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def launcher_problems(launcher: Any, torchrun: Any = None) -> list[str]:
    """Every problem of a grid's ``launcher:`` value that can be seen without importing anything."""
    if launcher is not None and not isinstance(launcher, (str, Mapping)):
        return [f"launcher: must be a launcher name ({', '.join(LAUNCHERS)}) or a mapping with the keys "
                f"{', '.join(sorted(LAUNCHER_KEYS))}, got {launcher!r}."]
    spec = _spec(launcher)
    problems = [f"launcher.{k}: unknown launcher key; valid keys: {', '.join(sorted(LAUNCHER_KEYS))}."
                for k in sorted(set(spec) - LAUNCHER_KEYS, key=str)]
    if spec.get("name", "local") not in LAUNCHERS:
        problems.append(f"launcher.name: {spec['name']!r} is not a launcher; valid: {', '.join(LAUNCHERS)}.")
    if spec.get("cluster", "slurm") not in CLUSTERS:
        problems.append(f"launcher.cluster: {spec['cluster']!r} is not a submitit cluster; valid: "
                        f"{', '.join(CLUSTERS)}.")
    if spec.get("slots_per_gpu") is not None:
        if not _count(spec["slots_per_gpu"], 1):
            problems.append(f"launcher.slots_per_gpu: must be null or an integer >= 1, got {spec['slots_per_gpu']!r}.")
        elif _count(torchrun, 2):
            problems.append(f"launcher.slots_per_gpu: places single-GPU runs, but torchrun: {torchrun} gives each "
                            "run several GPUs; drop one of the two.")
    if "resubmit" in spec and not _count(spec["resubmit"], 0):
        problems.append(f"launcher.resubmit: must be an integer >= 0, got {spec['resubmit']!r}.")
    if spec.get("slurm") is not None and not isinstance(spec["slurm"], Mapping):
        problems.append(f"launcher.slurm: must be a mapping of Slurm resources (partition, time, gpus_per_node, "
                        f"cpus_per_task, mem, ...), got {spec['slurm']!r}.")
    return problems


def killed(returncode: int | None) -> bool:
    """Whether a run's process was killed rather than failing by itself (``None``: its job was lost)."""
    return returncode is None or returncode < 0 or returncode > 128


def visible_gpus() -> list[str]:
    """The GPUs ``bench`` may place runs on: ``CUDA_VISIBLE_DEVICES`` (ids or UUIDs), else torch's count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:  # as CUDA reads it: up to the first empty or negative entry
        gpus = [g.strip() for g in env.split(",")]
        ends = [i for i, g in enumerate(gpus) if not g or g.startswith("-")]
        return gpus[:ends[0]] if ends else gpus
    return [str(i) for i in range(torch.cuda.device_count())]


def train_command(folder: Path, torchrun: int | None) -> list[str]:
    """``robust-distill train <folder>/run.yaml`` (under torchrun for ``torchrun > 1``), killed with its parent."""
    cli = ["-m", "robust_distill", "train", str(folder / "run.yaml")]
    if torchrun and torchrun > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", *cli]
    else:
        command = [sys.executable, *cli]
    return guarded(command)  # the child gets SIGTERM if its launcher dies, however it dies


@dataclass
class Started:
    """A run started by a launcher: the process (local) or job (submitit) and what it was given."""
    folder: Path
    attempt: int
    started: float
    handle: Any
    gpu: str | None = None
    logfile: Any = None
    info: dict[str, Any] = field(default_factory=dict)


class Launcher(abc.ABC):
    """Starts runs (:meth:`start`), says when one has ended and with which exit code (:meth:`poll`), and stops
    the runs still going when ``bench`` is interrupted (:meth:`stop`). ``bench`` does the rest."""

    name = ""
    resubmit = 2

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the log: how runs are started."""

    def has_room(self) -> bool:
        """Whether another run may start now."""
        return True

    @abc.abstractmethod
    def start(self, folder: Path, attempt: int) -> Started:
        """Start the run of ``folder`` (its ``run.yaml`` written) and write its ``status.json``."""

    @abc.abstractmethod
    def poll(self, run: Started) -> tuple[bool, int | None]:
        """``(ended, exit code)``; the exit code is ``None`` for a job that ended without one (lost)."""

    def release(self, run: Started) -> None:  # noqa: B027  (most launchers hold nothing per run)
        """``run`` has ended: free its place."""

    @abc.abstractmethod
    def stop(self, runs: list[Started]) -> None:
        """``bench`` was interrupted: stop ``runs`` (they resume from their ``last.pt`` next time)."""


class LocalLauncher(Launcher):
    """Child processes of ``bench``: ``parallel`` at a time, or ``slots_per_gpu`` per GPU of ``gpus``."""

    name = "local"

    def __init__(self, parallel: int, slots_per_gpu: int | None = None, gpus: list[str] | None = None,
                 threads: int | None = None, torchrun: int | None = None, resubmit: int = 2) -> None:
        self.slots_per_gpu, self.gpus, self.torchrun, self.resubmit = slots_per_gpu, gpus or [], torchrun, resubmit
        slots = slots_per_gpu * len(self.gpus) if slots_per_gpu else None
        self.capacity = min(parallel, slots) if parallel and slots else (slots or parallel or 1)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.capacity)
        self.active: dict[str, int] = dict.fromkeys(self.gpus, 0)  # runs on each GPU
        self.running = 0
        self._next = 0  # round-robin start among the GPUs with the fewest runs

    def describe(self) -> str:
        if not self.slots_per_gpu:
            return f"local processes, {self.capacity} at a time"
        return (f"local processes, {self.slots_per_gpu} per GPU on GPU {', '.join(self.gpus)} "
                f"({self.capacity} at a time)")

    def has_room(self) -> bool:
        return self.running < self.capacity

    def _place(self) -> str | None:
        if not self.slots_per_gpu:
            return None
        order = self.gpus[self._next:] + self.gpus[:self._next]
        gpu = min(order, key=lambda g: self.active[g])
        self._next = (self.gpus.index(gpu) + 1) % len(self.gpus)
        self.active[gpu] += 1
        return gpu

    def start(self, folder: Path, attempt: int) -> Started:
        gpu = self._place()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        logfile = open(folder / "train.log", "ab")  # noqa: SIM115  (closed by release)
        try:
            proc = subprocess.Popen(train_command(folder, self.torchrun), env=env, stdout=logfile, stderr=logfile)
        except BaseException:  # not started: its log and its GPU slot are free again
            logfile.close()
            if gpu is not None:
                self.active[gpu] -= 1
            raise
        self.running += 1
        run = Started(folder, attempt, time.time(), proc, gpu, logfile, {"gpu": gpu} if gpu is not None else {})
        atomic_write_json({"state": "running", "started": run.started, "attempt": attempt, "pid": proc.pid,
                           "bench_pid": os.getpid(), "host": socket.gethostname(), **run.info},
                          folder / "status.json")
        return run

    def poll(self, run: Started) -> tuple[bool, int | None]:
        code = run.handle.poll()
        return code is not None, code

    def release(self, run: Started) -> None:
        run.logfile.close()
        self.running -= 1
        if run.gpu is not None:
            self.active[run.gpu] -= 1

    def stop(self, runs: list[Started]) -> None:
        for run in runs:  # interrupted: stop the children; their last.pt lets them resume
            run.handle.terminate()
        for run in runs:
            try:
                run.handle.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.handle.kill()
                run.handle.wait()
            self.release(run)


@dataclass
class TrainJob:
    """One grid run as a submitit job: ``train`` in a child process, which resumes from ``last.pt``.

    Checkpointable: when Slurm preempts the job or its time runs out, submitit calls :meth:`checkpoint` and
    requeues the same job, whose ``train`` resumes.
    """
    folder: str
    torchrun: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> int:
        folder = Path(self.folder)
        submitit = import_optional("submitit", extra="slurm", feature="the submitit launcher")
        with open(folder / "train.log", "ab") as logfile:
            proc = subprocess.Popen(train_command(folder, self.torchrun), env={**os.environ, **self.env},
                                    stdout=logfile, stderr=logfile)
            try:
                atomic_write_json({"state": "running", "started": time.time(), "pid": proc.pid,
                                   "host": socket.gethostname(), "job_id": submitit.JobEnvironment().job_id},
                                  folder / "status.json")
                return proc.wait()
            finally:  # cancelled or requeued: train stops at once and resumes from last.pt
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission  # submitit: optional (the slurm extra)

        return DelayedSubmission(self)


class SubmititLauncher(Launcher):
    """One submitit job per run, all submitted at once (the cluster queues them)."""

    name = "submitit"

    def __init__(self, folder: Path, cluster: str = "slurm", slurm: Mapping[str, Any] | None = None,
                 threads: int | None = None, torchrun: int | None = None, resubmit: int = 2,
                 dry_run: bool = False, parallel: int | None = None) -> None:
        self.submitit = import_optional("submitit", extra="slurm", feature="the submitit launcher (launcher: submitit)")
        self.folder, self.cluster, self.slurm = folder, cluster, dict(slurm or {})
        self.torchrun, self.resubmit = torchrun, resubmit
        # cluster: local runs the jobs on this machine: `parallel` at a time (the cluster queues Slurm's)
        self.capacity = (parallel or 1) if cluster == "local" else None
        self.running = 0
        threads = threads or self.slurm.get("cpus_per_task")
        self.env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        valid = sorted(self.submitit.SlurmExecutor._valid_parameters() - _INTERNAL_SLURM_KEYS)
        problems = [f"launcher.slurm.{k}: not a Slurm resource of submitit's SlurmExecutor; valid: {', '.join(valid)}."
                    for k in sorted(set(self.slurm) - set(valid), key=str)]
        if cluster == "slurm" and "time" not in self.slurm:
            problems.append("launcher.slurm.time: the time limit of each job (minutes) is required on Slurm "
                            "(submitit's default is 5 minutes).")
        if cluster == "slurm" and self.submitit.SlurmExecutor.affinity() < 1:
            problems.append("launcher.cluster: slurm, but Slurm's `srun` is not found on this machine; run bench on "
                            "a Slurm login node, or use cluster: local to run the jobs here.")
        if problems:
            raise ConfigError(problems, "grid")
        self._executor: Any = None
        if not dry_run:
            self.executor  # noqa: B018  (made now: sbatch's checks of the values come before any run starts)

    @property
    def executor(self) -> Any:
        """submitit's executor, made at the first submission (it creates its folder)."""
        if self._executor is None:
            if self.cluster == "local":  # submitit hides every GPU from a job unless given some
                gpus = visible_gpus()
                self._executor = self.submitit.LocalExecutor(self.folder)
                self._executor.update_parameters(timeout_min=self.slurm.get("time", _NO_LIMIT_MIN),
                                                 gpus_per_node=self.slurm.get("gpus_per_node", len(gpus)),
                                                 visible_gpus=[int(g) for g in gpus] if all(
                                                     g.isdigit() for g in gpus) else ())
            else:
                self._executor = self.submitit.SlurmExecutor(self.folder)
                try:
                    self._executor.update_parameters(**self.slurm)
                except (ValueError, TypeError) as exc:  # a value sbatch cannot take
                    raise ConfigError([f"launcher.slurm: {exc}"], "grid") from exc
        return self._executor

    def describe(self) -> str:
        at_once = f", {self.capacity} at a time" if self.capacity else ""
        return f"submitit ({self.cluster}), one job per run{at_once}"

    def has_room(self) -> bool:
        return self.capacity is None or self.running < self.capacity

    def release(self, run: Started) -> None:
        self.running -= 1

    def start(self, folder: Path, attempt: int) -> Started:
        executor = self.executor
        if self.cluster == "slurm":
            executor.update_parameters(job_name=folder.name)
        started = time.time()  # written before the job can write its own "running"
        atomic_write_json({"state": "submitted", "started": started, "attempt": attempt, "bench_pid": os.getpid(),
                           "cluster": self.cluster}, folder / "status.json")
        job = executor.submit(TrainJob(str(folder), self.torchrun, self.env))
        self.running += 1
        return Started(folder, attempt, started, job, info={"job_id": job.job_id})

    def poll(self, run: Started) -> tuple[bool, int | None]:
        job = run.handle
        if not job.done():
            return False, None
        try:
            return True, int(job.result())
        except Exception as exc:  # submitit's UncompletedJobError / FailedJobError: no exit code
            run.info["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return True, None

    def stop(self, runs: list[Started]) -> None:
        for run in runs:
            run.handle.cancel(check=False)
        deadline = time.time() + 60  # the local executor's jobs stop (and release their folders) at once
        while self.cluster == "local" and time.time() < deadline and not all(r.handle.done() for r in runs):
            time.sleep(0.2)


def make_launcher(grid: Mapping[str, Any], out_dir: Path, *, parallel: int | None = None,
                  launcher: str | None = None, slots_per_gpu: int | None = None, dry_run: bool = False) -> Launcher:
    """The grid's launcher, with ``bench``'s ``--parallel``, ``--launcher`` and ``--slots-per-gpu`` on top;
    raises :class:`ConfigError` for what cannot work here (no GPU for slots, no Slurm, submitit missing).
    ``dry_run``: checked only, nothing written."""
    spec = _spec(grid.get("launcher"))
    name = launcher or spec.get("name", "local")
    problems = launcher_problems({**spec, "name": name}, grid.get("torchrun"))
    if slots_per_gpu is not None:
        if name != "local":
            problems.append(f"--slots-per-gpu: places runs of the local launcher, not of {name}.")
        if not _count(slots_per_gpu, 1):
            problems.append(f"--slots-per-gpu: must be an integer >= 1, got {slots_per_gpu!r}.")
    if problems:
        raise ConfigError(problems, "grid")
    resubmit = spec.get("resubmit", Launcher.resubmit)
    threads, torchrun = grid.get("threads_per_run"), grid.get("torchrun")
    if name == "submitit":
        return SubmititLauncher(out_dir / ".submitit", spec.get("cluster", "slurm"), spec.get("slurm"),
                                threads, torchrun, resubmit, dry_run, parallel or grid.get("parallel"))
    slots = slots_per_gpu or spec.get("slots_per_gpu")
    gpus = visible_gpus() if slots else []
    if slots and not gpus:
        where = "--slots-per-gpu" if slots_per_gpu else "launcher.slots_per_gpu"
        raise ConfigError([f"{where}: {slots} runs per GPU, but no GPU is visible (CUDA_VISIBLE_DEVICES is empty "
                           f"or torch sees no CUDA device); drop {where} to run `parallel` runs at a time."], "grid")
    return LocalLauncher(parallel or grid.get("parallel") or (None if slots else 1), slots, gpus, threads,
                         torchrun, resubmit)


def signal_name(returncode: int | None) -> str:
    """``exit 1``, ``SIGKILL``, ``SIGTERM (exit 143)`` or ``lost`` for a log line."""
    if returncode is None:
        return "lost"
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    try:
        name = signal.Signals(number).name if number else ""
    except ValueError:
        name = ""
    return (name + (f" (exit {returncode})" if returncode > 0 else "")) if name else f"exit {returncode}"
