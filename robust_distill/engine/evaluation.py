"""Evaluate a model against a list of attacks, per sample, with the training RNG left untouched.

Examples are attacked in fixed chunks, each after seeding the RNG from the chunk's index, so results do not
depend on the other examples or on the process: under ``torchrun`` the chunks are shared out across the
processes and the per-sample results gathered, equal to a single-process evaluation (see :func:`evaluate`);
on one GPU, AutoAttack's chunks are attacked several at once by worker processes (:class:`ChunkWorkers`),
with the same results.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from robust_distill.core.attacks import model_mode
from robust_distill.core.components import EvalAttack
from robust_distill.core.precision import autocast
from robust_distill.core.threat import ThreatModel
from robust_distill.data.memory import EvalSet, TensorEvalSet, iterate_eval, to_device, to_float
from robust_distill.engine.distributed import all_reduce_tensor, rank_and_world
from robust_distill.engine.progress import Progress, progress_scope
from robust_distill.errors import AttackContractError

__all__ = ["EvalResult", "evaluate", "evaluate_set", "make_eval_attacks", "AttackContractError", "TransferAttack",
           "chunk_size", "chunk_seed", "check_concurrency", "auto_concurrency", "worker_bytes", "ChunkWorkers"]


@dataclass
class EvalResult:
    """Accuracy per attack and per-sample correctness (bool tensors, in input order)."""

    n: int
    correct: dict[str, Tensor] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, float]:
        return {name: c.float().mean().item() for name, c in self.correct.items()}

    def worst_case(self, names: list[str]) -> Tensor:
        """Per-sample correctness under all of ``names`` (a sample counts only if it survives every one)."""
        out = torch.ones(self.n, dtype=torch.bool)
        for n in names:
            out &= self.correct[n]
        return out


def make_eval_attacks(names: list[str], regs: object, threat: ThreatModel | None = None, *, num_classes: int,
                      eps: float | None = None) -> dict[str, EvalAttack]:
    """Instantiate registered evaluation attacks by name for the L-inf ball of ``threat`` (its ``eps``: each
    evaluation attack has its own steps and step size, see ``torchattacks_attacks``).

    ``eps=<float>`` instead of ``threat`` is the former call: it still works for one release, with a
    ``DeprecationWarning`` (the eval-attack factories of ``rd_register_eval_attacks`` still take ``eps``).
    """
    if (threat is None) == (eps is None):
        raise TypeError(f"make_eval_attacks: give threat=ThreatModel(eps=...) (or, deprecated, eps=...), not "
                        f"{'both' if eps is not None else 'neither'}")
    if threat is None:
        warnings.warn("make_eval_attacks(eps=...) is deprecated: pass threat=ThreatModel(eps=...); eps= will be "
                      "removed in the next release.", DeprecationWarning, stacklevel=2)
        threat = ThreatModel(eps=eps)  # type: ignore[arg-type]
    elif not isinstance(threat, ThreatModel):
        raise TypeError(f"make_eval_attacks: threat must be a ThreatModel (robust_distill.ThreatModel(eps=...)), "
                        f"got {type(threat).__name__}")
    return {name: regs.eval_attacks.build(name, {}, eps=threat.eps,  # type: ignore[attr-defined]
                                          num_classes=num_classes)
            for name in names}


class TransferAttack(EvalAttack):
    """Black-box transfer: ``base`` crafts ``x_adv`` on a ``surrogate`` model, then the target is tested."""

    def __init__(self, base: EvalAttack, surrogate: nn.Module, surrogate_name: str = "surrogate") -> None:
        self.base, self.surrogate = base, surrogate.eval()
        self.eps = getattr(base, "eps", None)
        self.chunk_size = getattr(base, "chunk_size", None)
        self.name = f"transfer_{getattr(base, 'name', 'attack')}"
        self.label = f"Transfer {getattr(base, 'label', self.name)} from {surrogate_name}"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.base(self.surrogate, x, y)


def _check_contract(name: str, x: Tensor, x_adv: Tensor, eps: float | None) -> None:
    if x_adv.shape != x.shape:
        raise AttackContractError(f"attack {name!r} returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
        raise AttackContractError(f"attack {name!r} returned inputs outside [0, 1]")
    if eps is not None and (x_adv - x).abs().max() > eps + 1e-5:
        raise AttackContractError(
            f"attack {name!r} left the eps={eps:g} ball (max |delta| = {(x_adv - x).abs().max():.4g})")


@contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """cuDNN's fixed, deterministic algorithms (no autotuning): the same chunk gives the same bits on any rank."""
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags


def chunk_size(attack: EvalAttack, batch_size: int, n: int) -> int:
    """How many examples one call of ``attack`` gets: its own ``chunk_size`` (AutoAttack: its batch size),
    all of them for a legacy ``whole_set`` attack, else the evaluation batch size."""
    if getattr(attack, "chunk_size", None):
        return int(attack.chunk_size)  # type: ignore[attr-defined]
    return max(n, 1) if getattr(attack, "whole_set", False) else batch_size


def chunk_seed(seed: int, chunk: int) -> int:
    """The RNG seed of one chunk: a function of the run's seed and the chunk's index only."""
    return (seed * 1_000_003 + chunk) % 2**63


def check_concurrency(value: object) -> int | str:
    """``value`` if it is a valid evaluation concurrency (``"auto"`` or an integer >= 1), else a ValueError."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value  # type: ignore[return-value]
    raise ValueError(f"evaluation concurrency must be 'auto' or an integer >= 1 (the number of chunks attacked "
                     f"at once, each by its own process), got {value!r}.")


@dataclass(frozen=True)
class _ChunkOptions:
    """What attacking one chunk needs besides the model, the attack and the examples."""

    seed: int
    device: str
    precision: str
    batch_size: int
    progress: bool
    desc: str


def _attack_chunk(model: nn.Module, name: str, attack: EvalAttack, k: int, xb: Tensor, yb: Tensor,
                  opts: _ChunkOptions) -> Tensor:
    """Per-sample correctness (int32, on the device) of chunk ``k`` under ``attack``, attacked right after
    ``torch.manual_seed(chunk_seed(seed, k))``: the one implementation, in this process or in a worker."""
    device = torch.device(opts.device)
    xb, yb = to_float(xb, device), to_device(yb, device)
    torch.manual_seed(chunk_seed(opts.seed, k))
    with autocast(device, opts.precision), progress_scope(opts.progress, f"{opts.desc} {name}"):
        x_adv = attack(model, xb, yb)
    _check_contract(name, xb, x_adv, getattr(attack, "eps", None))
    correct = torch.empty(xb.shape[0], dtype=torch.int32, device=device)
    for i, xa, ya in iterate_eval(x_adv, yb, opts.batch_size):
        with torch.no_grad(), autocast(device, opts.precision):
            correct[i:i + xa.shape[0]] = (model(xa).argmax(1) == ya).int()
    return correct


# -------------------------------------------------------------------------------------------------
# Concurrent chunks: worker processes sharing the device
# -------------------------------------------------------------------------------------------------

#: most workers ``concurrency: auto`` starts (each is a Python process kept busy issuing AutoAttack's kernels)
AUTO_MAX_WORKERS = 8
#: GPU memory a worker takes besides the model and its chunk: its CUDA context and allocator slack
WORKER_OVERHEAD_BYTES = 1 << 30

_WORKER: dict[str, Any] = {}  # in a worker process: its model, attacks and options (set by _init_worker)


def _numerics() -> dict[str, Any]:
    """The process-wide settings that change a result's bits, copied into the workers."""
    return {"cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul": torch.get_float32_matmul_precision(),
            "deterministic": (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled())}


def _init_worker(payload: bytes, opts: _ChunkOptions, numerics: dict[str, Any], threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it stops the workers)
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = numerics["cudnn_tf32"]
    torch.set_float32_matmul_precision(numerics["matmul"])
    torch.use_deterministic_algorithms(numerics["deterministic"][0], warn_only=numerics["deterministic"][1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # as _deterministic_cudnn
    try:  # a failure is reported by _worker_ready (a failing initializer would only break the pool)
        state = torch.load(io.BytesIO(payload), map_location=opts.device, weights_only=False)
    except Exception as exc:
        _WORKER["error"] = f"{type(exc).__name__}: {exc}"
        return
    _WORKER.update(state, opts=opts)
    _WORKER["model"].eval()


def _worker_ready() -> str | None:
    return _WORKER.get("error")


def _worker_chunk(name: str, k: int, xb: Tensor, yb: Tensor) -> tuple[int, Tensor]:
    w = _WORKER
    return k, _attack_chunk(w["model"], name, w["attacks"][name], k, xb, yb, w["opts"]).cpu()


class ChunkWorkers:
    """``n`` worker processes on one device, each with its own copy of the model and attacks, attacking
    whole chunks concurrently (a chunk is one task, so a result is exactly the one-process result).

    Why processes: the reference AutoAttack draws its random starts and Square's windows from the
    process-wide CPU generator after re-seeding it (``torch.random.manual_seed``), so threads would mix
    their chunks' random streams; and its per-iteration Python work (the reason one chunk leaves a GPU
    idle) would be serialised by the GIL. Each process has its own RNG and interpreter; on CUDA their
    kernels share the GPU (time-sliced, or truly concurrent under NVIDIA MPS).
    """

    def __init__(self, n: int, model: nn.Module, attacks: Mapping[str, EvalAttack], opts: _ChunkOptions) -> None:
        buf = io.BytesIO()
        what = f"evaluation concurrency {n} needs the model and the attacks ({', '.join(attacks)}) in worker processes"
        if getattr(model, "_compiled_call_impl", None) is not None:  # a copy would run eagerly: other bits
            raise ValueError(f"{what}, but the model is compiled (optim.compile) and a pickled copy runs eagerly, "
                             "which rounds differently. Use concurrency 1.")
        try:
            torch.save({"model": model, "attacks": dict(attacks)}, buf)
        except Exception as exc:  # a lambda, a local class, an open file inside the model or an attack
            raise ValueError(f"{what}, which load a pickled copy, but they cannot be pickled: "
                             f"{type(exc).__name__}: {exc}. Use concurrency 1.") from None
        threads = torch.get_num_threads()  # on CPU as here: a worker computes the bits this process would
        if torch.device(opts.device).type == "cuda":
            threads = max(1, threads // n)
        self.n, self.attacks = n, set(attacks)
        self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker,
                                        initargs=(buf.getvalue(), replace(opts, progress=False), _numerics(),
                                                  threads))
        # n questions start the n processes at once (the pool starts one per task when none is idle)
        try:
            problem = next(filter(None, [f.result() for f in [self.pool.submit(_worker_ready) for _ in range(n)]]),
                           None)
        except BrokenProcessPool:  # e.g. a script without `if __name__ == "__main__":`, which spawn re-runs
            self.close(failed=True)
            raise ValueError(f"{what}, but a worker process died while starting (a script that evaluates must "
                             "guard its top level with `if __name__ == \"__main__\":`, which spawned processes "
                             "re-run; or the device or host memory is exhausted). Use concurrency 1.") from None
        if problem:
            self.close(failed=True)
            raise ValueError(f"{what}, but a worker cannot load them ({problem}); a worker imports the model's "
                             "classes by their module (a class defined in a notebook or in a function cannot be "
                             "loaded). Use concurrency 1.")

    def chunks(self, name: str, data: EvalSet, size: int, mine: list[int]) -> Iterator[tuple[int, Tensor]]:
        """``(k, correctness)`` of each chunk in ``mine``, in the order they finish; chunks are read as the
        workers take them (at most two waiting per worker)."""
        pending: set[Future] = set()
        batches = zip(mine, data.batches(size, mine), strict=True)
        for k, (xb, yb) in batches:
            # copies: sending a slice would move the whole data tensor's storage into shared memory
            pending.add(self.pool.submit(_worker_chunk, name, k, xb.to("cpu", copy=True), yb.to("cpu", copy=True)))
            while len(pending) >= 2 * self.n:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (self._result(f) for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (self._result(f) for f in done)

    def _result(self, future: Future) -> tuple[int, Tensor]:
        try:
            return future.result()
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(
                f"{self.n} concurrent evaluation chunks do not fit in the GPU's memory ({str(exc).splitlines()[0]}); "
                f"lower the concurrency (eval.concurrency, --concurrency; 'auto' sizes it from free memory).") from None
        except BrokenProcessPool:
            raise RuntimeError(f"an evaluation worker process (one of {self.n}) died while attacking a chunk "
                               "(killed for lack of host memory, or a crash in native code); lower the "
                               "concurrency (eval.concurrency, --concurrency) or use 1.") from None

    def close(self, failed: bool = False) -> None:
        """Stop the workers: after the last chunk, or at once (``failed``) without waiting for their chunks."""
        if failed:
            for process in list(getattr(self.pool, "_processes", {}).values()):  # no public way before 3.14
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def worker_bytes(model: nn.Module, x: Tensor, precision: str = "fp32") -> int:
    """Memory one worker needs to attack the chunk ``x`` (on the model's device): its fixed overhead, the
    weights, and twice the activations a forward saves for the input gradient (counted, not kept)."""
    weights = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> None:
        if t.data_ptr() not in weights:
            saved[t.data_ptr()] = t.numel() * t.element_size()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None), autocast(x.device, precision):
        model(x.detach().requires_grad_(True))
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return WORKER_OVERHEAD_BYTES + size + 2 * sum(saved.values())


def auto_concurrency(model: nn.Module, x: Tensor, device: torch.device, precision: str = "fp32") -> int:
    """``concurrency: auto``: 1 on CPU; on CUDA as many workers as fit in the GPU's free memory
    (:func:`worker_bytes` of the chunk ``x`` each), at most one per CPU core left to this process (cores
    shared among a ``torchrun`` node's processes) and at most :data:`AUTO_MAX_WORKERS`."""
    if device.type != "cuda":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores //= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(AUTO_MAX_WORKERS, cores - 1, int(0.9 * free) // worker_bytes(model, to_float(x, device),
                                                                                  precision)))


def _start_workers(model: nn.Module, data: EvalSet, attacks: Mapping[str, EvalAttack], size: int, mine: list[int],
                   concurrency: int | str, opts: _ChunkOptions) -> ChunkWorkers | None:
    """Workers for the attacks with their own ``chunk_size``, or None where they would be one (``auto`` on
    CPU or on a full GPU, a single chunk; under ``auto``, a model that cannot be copied into a worker)."""
    own = {name: a for name, a in attacks.items() if getattr(a, "chunk_size", None)}
    n = int(concurrency) if concurrency != "auto" else \
        auto_concurrency(model, next(iter(data.batches(size, mine[:1])))[0], torch.device(opts.device), opts.precision)
    n = min(n, len(mine))
    if n == 1:
        return None
    try:
        return ChunkWorkers(n, model, own, opts)
    except ValueError as exc:
        if concurrency != "auto":
            raise
        warnings.warn(f"{exc} Evaluating one chunk at a time.", RuntimeWarning, stacklevel=3)
        return None


def evaluate(model: nn.Module, x: Tensor, y: Tensor, attacks: Mapping[str, EvalAttack], **options: Any) -> EvalResult:
    """Per-sample correctness of ``model`` on the tensors ``(x, y)``: :func:`evaluate_set` on them."""
    return evaluate_set(model, TensorEvalSet(x, y, torch.arange(x.shape[0])), attacks, **options)


def evaluate_set(model: nn.Module, data: EvalSet, attacks: Mapping[str, EvalAttack], *,
                 batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
                 progress: bool = False, desc: str = "eval", precision: str = "fp32",
                 shard: bool = True, concurrency: int | str = "auto") -> EvalResult:
    """Per-sample correctness of ``model`` (put in eval mode) on ``data`` under each attack, in ``data``'s
    order (tensors in memory or images streamed from files: :class:`~robust_distill.data.memory.EvalSet`).

    The examples are cut into fixed chunks (``batch_size``, or the attack's own ``chunk_size``: AutoAttack's
    500; a streamed set caps a chunk at its ``chunk`` images); every chunk is attacked alone, right after
    ``torch.manual_seed(chunk_seed(seed, index))``, so an example's result depends only on its chunk, never
    on what else is evaluated or on which process does it. Under ``torchrun`` (``shard``) chunk ``k`` goes to
    process ``k mod world_size`` (which reads only its own chunks) and the per-sample correctness is summed
    over the processes: N processes evaluate N times faster and every process returns the numbers of a
    single-process evaluation, exactly. On CUDA the evaluation uses cuDNN's deterministic algorithms for the
    same reason.

    ``concurrency``: how many chunks of an attack with its own ``chunk_size`` (AutoAttack) are attacked at
    once, each by a worker process (:class:`ChunkWorkers`) on ``device``; the results are the same bits.
    ``auto``: :func:`auto_concurrency` (1 on CPU); never more workers than chunks. With workers, progress
    counts chunks (not AutoAttack's stages).

    Runs inside ``torch.random.fork_rng``: evaluation does not shift the training random stream (APGD and
    Square re-seed the global RNG; this isolates them too). ``precision`` is ``fp32`` (default: numbers
    comparable with the papers) or ``bf16`` (autocast). Every adversarial chunk is checked to lie in
    [0, 1] and in the attack's eps ball. ``progress``: a bar on a terminal, lines elsewhere
    (:mod:`robust_distill.engine.progress`), per attack and per AutoAttack stage.
    """
    check_concurrency(concurrency)
    device = torch.device(device)
    n = data.n
    result = EvalResult(n=n)
    rank, world = rank_and_world() if shard else (0, 1)
    devices = [device] if device.type == "cuda" else []
    opts = _ChunkOptions(seed, str(device), precision, batch_size, progress, desc)
    workers: ChunkWorkers | None = None
    started, failed = False, True
    with torch.random.fork_rng(devices=devices), model_mode(model, False), _deterministic_cudnn():
        try:
            for name, attack in attacks.items():
                size = min(chunk_size(attack, batch_size, n), getattr(data, "chunk", None) or max(n, 1))
                mine = list(range(rank, -(-n // size), world))
                if not started and getattr(attack, "chunk_size", None) and len(mine) > 1 and concurrency != 1:
                    workers, started = _start_workers(model, data, attacks, size, mine, concurrency, opts), True
                correct = torch.zeros(n, dtype=torch.int32, device=device)
                bar = Progress(len(mine), f"{desc} {name}", unit="batch", enabled=progress)
                hits = seen = 0
                if workers is not None and name in workers.attacks:
                    chunks = workers.chunks(name, data, size, mine)
                else:
                    chunks = ((k, _attack_chunk(model, name, attack, k, xb, yb, opts))
                              for k, (xb, yb) in zip(mine, data.batches(size, mine), strict=True))
                for k, chunk in chunks:
                    correct[k * size:k * size + chunk.shape[0]] = chunk.to(device)
                    if progress:  # one host sync per chunk, only when someone reads the line
                        hits, seen = hits + int(chunk.sum()), seen + chunk.shape[0]
                        bar.update(1, items=chunk.shape[0], stats={"acc": f"{100 * hits / max(seen, 1):.2f}%"})
                bar.close()
                result.correct[name] = all_reduce_tensor(correct).cpu().bool()
            failed = False
        finally:
            if workers is not None:
                workers.close(failed)
    return result
