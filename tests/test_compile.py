"""``optim.compile``: the compiled step gives the eager loss (CPU, inductor backend) and a platform that
cannot compile gets a clear message."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robust_distill.config import resolve_config
from robust_distill.core.manager import get_plugin_manager
from robust_distill.engine import compilation
from robust_distill.engine.compilation import check_compile, compile_mode, compile_module, device_mode
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.run import Run
from robust_distill.engine.trainer import _train_epoch
from robust_distill.errors import CompileUnavailableError, ConfigError

from .conftest import TINY
from .test_precision import _fixed_batch_run


@pytest.mark.slow
def test_compiled_step_matches_eager_on_cpu_inductor(regs) -> None:
    """AdaAD (student and teacher in the attack graph, parameters frozen and unfrozen, train and eval mode)."""
    eager_losses, eager_w, _ = _fixed_batch_run(regs, "fp32", "adaad")
    torch._dynamo.reset()
    losses, w, run = _fixed_batch_run(regs, "fp32", "adaad", compile=True)
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    assert torch.allclose(w, eager_w, rtol=1e-4, atol=1e-5)
    assert "_orig_mod" not in "".join(run.student.state_dict())  # checkpoints keep the eager keys
    assert run.student._compiled_call_impl is not None and run.teachers["robust"]._compiled_call_impl is not None


def test_compile_option_values(tiny_config) -> None:
    assert compile_mode(False) is None and compile_mode(True) == "default"
    assert compile_mode("max-autotune") == "max-autotune"
    assert tiny_config("pgd_at", overrides=["optim.compile=reduce-overhead"]).optim.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match="optim.compile: expected bool | 'default' | 'reduce-overhead'"):
        tiny_config("pgd_at", overrides=["optim.compile=fast"])


def test_a_platform_that_cannot_compile_gets_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a, **k):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx\n"
                           "long traceback text")

    monkeypatch.setattr(compilation.torch, "compile", broken)
    with pytest.raises(CompileUnavailableError) as info:
        check_compile("cpu", "default")
    message = str(info.value)
    assert "does not work on this platform (cpu" in message and "InvalidCxxCompiler" in message
    assert "long traceback" not in message and "optim.compile: false" in message


def test_cuda_graph_modes_compile_without_graphs_off_cuda() -> None:
    assert device_mode("reduce-overhead", "cpu") == "default"
    assert device_mode("max-autotune", "cpu") == "max-autotune-no-cudagraphs"
    assert device_mode("reduce-overhead", "cuda") == "reduce-overhead" and device_mode(None, "cpu") is None
    assert device_mode("max-autotune-no-cudagraphs", "cpu") == "max-autotune-no-cudagraphs"


class _Replay(nn.Module):
    """Returns the same buffer at every call, as a CUDA graph replay returns its fixed output memory."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("out", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out.copy_(x)
        return self.out


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_outputs_of_a_cuda_graph_module_survive_its_next_call(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setattr(nn.Module, "compile",
                        lambda self, **kw: setattr(self, "_compiled_call_impl", self._call_impl))  # no inductor
    model = compile_module(_Replay(), mode)
    first = model(torch.ones(2))
    second = model(torch.full((2,), 2.0))
    assert second.tolist() == [2.0, 2.0]
    # a graph's next replay overwrites its outputs: kept outputs (a cached target) are copies in CUDA-graph modes
    assert first.tolist() == ([1.0, 1.0] if mode == "reduce-overhead" else [2.0, 2.0])


def _two_epochs(regs, method: str, **optim) -> tuple[list[float], torch.Tensor, Run]:
    """Two epochs of 32 training images in batches of 24 and 8 (a last, smaller batch), bf16 on CUDA."""
    raw = copy.deepcopy(TINY)
    raw.update(method=method, output_dir="unused", device="cuda", teachers={"robust": "timm:convnet_xs"})
    raw["data"].update(batch_size=24, augment=False)
    raw["data"]["options"].update(n_train=64, size=16)
    raw["optim"].update(precision="bf16", **optim)
    torch.manual_seed(0)
    run = Run(resolve_config(raw, regs), regs, get_plugin_manager(), DistContext())
    losses = [_train_epoch(run, e)["train_loss"] for e in range(2)]
    return losses, torch.cat([p.detach().flatten() for p in run.student.parameters()]).cpu(), run


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["adaad", "rslad"])
def test_cuda_graph_steps_match_eager_on_cuda(regs, method: str) -> None:
    """reduce-overhead (the constant teacher cast and folded: fold_bn auto is on for CUDA bf16; the student
    cast and folded per attack, in eval mode) over two epochs whose last batch is smaller (a second graph),
    against the eager steps; compiled kernels round differently, so the tolerance is bf16's."""
    eager, eager_w, _ = _two_epochs(regs, method)
    torch._dynamo.reset()
    graphed, w, run = _two_epochs(regs, method, compile="reduce-overhead")
    assert run.cudagraphs and run.fold_bn and sum(run.folded_bn.values()) > 0
    assert graphed == pytest.approx(eager, rel=5e-2)
    assert ((w - eager_w).norm() / eager_w.norm()).item() < 2e-2
