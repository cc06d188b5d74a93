"""``optim.compile``: the compiled step gives the eager loss (CPU, inductor backend) and a platform that
cannot compile gets a clear message."""

from __future__ import annotations

import pytest
import torch

from robust_distill import compilation
from robust_distill.compilation import CompileUnavailableError, check_compile, compile_mode
from robust_distill.config import ConfigError

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
