"""``optim.compile``: ``torch.compile`` of the student's and the teachers' forwards.

``false`` (default) runs eagerly; ``true`` is ``torch.compile``'s ``default`` mode; a string is a mode
(``reduce-overhead``, ``max-autotune``, ``max-autotune-no-cudagraphs``). Modules are compiled in place
(``nn.Module.compile``): their ``state_dict`` keys do not change, so checkpoints of compiled and eager runs
are interchangeable, and everything that calls the module (the inner attack, the outer loss, the
evaluation attacks) runs the compiled forward. A compiled forward is specialised on the module's mode
(train/eval), on whether its parameters require grad (frozen during the attack) and on grad mode, so a
run compiles a few graphs per model once and then reuses them.

CUDA graphs (``reduce-overhead``, ``max-autotune``) replay a recorded forward with fixed addresses: the
fixed-shape inner attack (10 forwards and input gradients per step) then costs one launch per graph instead of
one per kernel. A graph's outputs live in memory that its next replay overwrites, and the engine keeps outputs
across calls (cached teacher targets, an attack's fixed target), so :func:`compile_module` clones every output
of a module compiled in such a mode (a copy of the logits: B x C values); the engine also marks the start of
each training step (``torch.compiler.cudagraph_mark_step_begin``), and the weights it swaps in
(:mod:`robust_distill.engine.fastpath`) keep their addresses. CUDA graphs exist on CUDA only: elsewhere
(:func:`device_mode`) ``reduce-overhead`` compiles as ``default`` and ``max-autotune`` as
``max-autotune-no-cudagraphs``, the same numbers without graphs.

Before a run compiles anything, :func:`check_compile` compiles and runs a tiny module on the run's device
and turns a platform that cannot compile (no C++ compiler for inductor on CPU, no Triton on the GPU, an
unsupported Python) into a :class:`CompileUnavailableError` saying why and that ``optim.compile: false``
works everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robust_distill.errors import CompileUnavailableError

__all__ = ["compile_mode", "device_mode", "check_compile", "compile_module", "CompileUnavailableError",
           "CUDAGRAPH_MODES"]

#: modes that capture CUDA graphs, and their equivalent without graphs (off CUDA, where there are none)
CUDAGRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_mode(value: bool | str) -> str | None:
    """``optim.compile`` -> a ``torch.compile`` mode, or ``None`` for eager."""
    if value is False or value is None:
        return None
    return "default" if value is True else str(value)


def device_mode(mode: str | None, device: torch.device | str) -> str | None:
    """``mode`` as it applies on ``device``: off CUDA a CUDA-graph mode is its equivalent without graphs."""
    if mode is None or torch.device(device).type == "cuda":
        return mode
    return CUDAGRAPH_MODES.get(mode, mode)


def check_compile(device: torch.device | str, mode: str) -> None:
    """Compile and run (forward and backward) a tiny module on ``device``; raise a clear error if it fails."""
    device = torch.device(device)
    try:
        probe = nn.Linear(4, 2).to(device)
        compiled = torch.compile(probe, mode=None if mode == "default" else mode)
        compiled(torch.ones(3, 4, device=device)).sum().backward()
    except Exception as exc:  # inductor/triton/compiler failures come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CompileUnavailableError(
            f"optim.compile: torch.compile (mode {mode!r}) does not work on this platform ({device.type}, "
            f"torch {torch.__version__}): {type(exc).__name__}: {first[:300]}. On CPU the inductor backend "
            "needs a C++ compiler (gcc or clang), on CUDA it needs Triton. Set optim.compile: false to train "
            "eagerly (same numbers, slower).") from exc


#: graphs one forward may need: {train, eval} x {parameters frozen or not} x {grad, no_grad} x batch sizes
RECOMPILE_LIMIT = 32


def compile_module(module: nn.Module, mode: str) -> nn.Module:
    """Compile ``module``'s forward in place (state-dict keys unchanged); returns the module.

    Raises dynamo's per-function recompile limit (8 by default) to :data:`RECOMPILE_LIMIT`, so that the
    variants a training run needs do not fall back to eager.
    """
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    module.compile(mode=None if mode == "default" else mode)
    if mode in CUDAGRAPH_MODES:
        module._compiled_call_impl = _cloning(module._compiled_call_impl)
    return module


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(v) for v in out)
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    return out


def _cloning(graphed: Callable[..., Any]) -> Callable[..., Any]:
    """``graphed`` with its outputs copied out of the CUDA graph's memory (its next replay overwrites them)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return _clone(graphed(*args, **kwargs))
    return call
