"""Code in a checkpoint never runs: every path that reads a weights file, fed a pickle payload.

The payload's ``__reduce__`` creates a marker file when unpickled; each test asserts the load is refused
with a message naming the way out (``trust_checkpoint``) and that the marker does not exist afterwards.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_distill import DatasetInfo
from robust_distill.cli import main
from robust_distill.engine.trainer import train
from robust_distill.errors import CheckpointError, UnsafeCheckpointError
from robust_distill.files.checkpoint import load_checkpoint, load_weights_file, weights_only_loads

from .conftest import needs_robustbench

SYNTH = DatasetInfo("synthetic", 10, (3, 16, 16))


class Payload:
    """Unpickling this creates ``marker`` (what an attacker's checkpoint would do with a shell command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def evil(path: Path, marker: Path, state: dict | None = None) -> Path:
    """A checkpoint holding real weights (if given) next to the payload."""
    torch.save({"state_dict": state or {}, "payload": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "pwned"
    yield m
    assert not m.exists(), "the pickle payload ran"


def convnet_xs_state(num_classes: int = 10) -> dict:
    from robust_distill_plugins.timm_students import create

    return create("convnet_xs", input_shape=(3, 16, 16), num_classes=num_classes).state_dict()


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    """The fixture is a real exploit: ``weights_only=False`` runs it (the opt-in tests rely on this)."""
    m = tmp_path / "pwned"
    torch.load(evil(tmp_path / "evil.pt", m), weights_only=False)
    assert m.exists()


@pytest.mark.parametrize("option", ["checkpoint_path", "pretrained_file"])
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_timm_sources_refuse_a_payload(regs, tmp_path: Path, marker: Path, option: str, kind: str) -> None:
    path = evil(tmp_path / "evil.pt", marker, convnet_xs_state())
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint: true") as e:
        if kind == "teacher":
            regs.teacher_sources.get("timm").load("convnet_xs", dataset=SYNTH, **{option: str(path)})
        else:
            regs.student_sources.get("timm").build("convnet_xs", input_shape=(3, 16, 16), num_classes=10,
                                                   **{option: str(path)})
    assert "evil.pt" in str(e.value) and "pickles exec" in str(e.value)  # names the file and the offending global


def test_eval_command_refuses_a_payload_in_a_timm_checkpoint_path(tmp_path: Path, marker: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's reproduction: ``robust-distill eval timm:convnet_xs ... checkpoint_path=evil.pt``."""
    path = evil(tmp_path / "evil.pt", marker, convnet_xs_state())
    code = main(["eval", "timm:convnet_xs", "--dataset", "synthetic", "--model-option",
                 f"checkpoint_path={path}", "--attacks", "clean", "--device", "cpu", "--n-examples", "8"])
    err = capsys.readouterr().err
    assert code == 3 and "--trust-checkpoint" in err and "Traceback" not in err


def test_eval_command_refuses_a_payload_checkpoint_file(tmp_path: Path, marker: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = evil(tmp_path / "evil.pt", marker)
    assert main(["eval", str(path), "--dataset", "synthetic", "--attacks", "clean", "--device", "cpu"]) == 3
    assert "trust" in capsys.readouterr().err


def test_checkpoint_teacher_refuses_a_payload(regs, tmp_path: Path, marker: Path) -> None:
    path = evil(tmp_path / "evil.pt", marker, convnet_xs_state())
    with pytest.raises(UnsafeCheckpointError):
        regs.call(regs.teacher_sources.get("checkpoint").load, str(path), dataset=SYNTH, arch="timm:convnet_xs")


def test_resume_refuses_a_payload_last_pt(tiny_config, tmp_path: Path, marker: Path) -> None:
    cfg = tiny_config(output_dir=str(tmp_path / "run"), optim={"epochs": 1})
    (tmp_path / "run").mkdir()
    evil(tmp_path / "run" / "last.pt", marker)
    with pytest.raises(UnsafeCheckpointError):
        train(cfg)


@needs_robustbench
def test_robustbench_model_dir_payload_is_refused(tmp_path: Path, marker: Path) -> None:
    """A payload where RobustBench looks for the weights (``<model_dir>/cifar10/Linf/<name>.pt``)."""
    from robust_distill_plugins.robustbench_teachers import RobustBenchTeachers

    name = "Chen2021LTD_WRN34_10"
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    evil(folder / f"{name}.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint"):
        RobustBenchTeachers().load(name, dataset=DatasetInfo("cifar10", 10, (3, 32, 32)), model_dir=str(tmp_path),
                                   offline=True)


@needs_robustbench
def test_robustbench_checkpoint_with_numpy_scalars_loads_without_opt_in(tmp_path: Path) -> None:
    """Old RobustBench files pickle numpy scalars next to the weights: allow-listed, no trust needed."""
    from robust_distill._compat import import_robustbench
    from robust_distill_plugins.robustbench_teachers import RobustBenchTeachers

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    name = "Gowal2021Improving_R18_ddpm_100m"
    torch.manual_seed(0)
    model = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][name]["model"]()
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "best_acc": np.float64(0.61), "epoch": np.int64(99),
                "mean": np.zeros(3, dtype=np.float32)}, folder / f"{name}.pt")
    teacher = RobustBenchTeachers().load(name, dataset=DatasetInfo("cifar10", 10, (3, 32, 32)),
                                         model_dir=str(tmp_path), offline=True)
    key = next(k for k in model.state_dict() if k.endswith("weight"))
    assert torch.equal(teacher.state_dict()[key], model.state_dict()[key])


def test_trust_checkpoint_is_the_explicit_opt_in(regs, tmp_path: Path) -> None:
    """A harmless but non-allow-listed object (a date) needs the opt-in, and loads with it."""
    state = convnet_xs_state()
    path = tmp_path / "dated.pt"
    torch.save({"state_dict": state, "saved": datetime.date(2021, 1, 1)}, path)
    source = regs.teacher_sources.get("timm")
    with pytest.raises(UnsafeCheckpointError, match="date"):
        source.load("convnet_xs", dataset=SYNTH, checkpoint_path=str(path))
    model = source.load("convnet_xs", dataset=SYNTH, checkpoint_path=str(path), trust_checkpoint=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_timm_checkpoint_path_loads_weights_and_safetensors(regs, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = convnet_xs_state()
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "a.pt")
    save_file(state, str(tmp_path / "b.safetensors"))
    for name in ("a.pt", "b.safetensors"):
        model = regs.teacher_sources.get("timm").load("convnet_xs", dataset=SYNTH,
                                                      checkpoint_path=str(tmp_path / name))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_timm_pretrained_file_adapts_the_classifier(regs, tmp_path: Path) -> None:
    """``pretrained_file`` keeps timm's adaptation: a 10-class file into a 4-class model drops the head."""
    state = convnet_xs_state(num_classes=10)
    torch.save(state, tmp_path / "p.pt")
    model = regs.student_sources.get("timm").build("convnet_xs", input_shape=(3, 16, 16), num_classes=4,
                                                   pretrained_file=str(tmp_path / "p.pt"))
    got = model.state_dict()
    assert got["classifier.weight"].shape == (4, 8)
    assert torch.equal(got["features.0.weight"], state["features.0.weight"])


def test_the_guard_covers_third_party_loaders_that_pass_weights_only_false(tmp_path: Path, marker: Path) -> None:
    """timm's own ``load_checkpoint`` unpickles with ``weights_only=False``; inside the guard it cannot."""
    from timm.models import load_checkpoint as timm_load_checkpoint

    from robust_distill_plugins.timm_students import create

    model = create("convnet_xs", input_shape=(3, 16, 16), num_classes=10)
    path = evil(tmp_path / "evil.pt", marker, model.state_dict())
    original = torch.load
    with pytest.raises(UnsafeCheckpointError), weights_only_loads():
        timm_load_checkpoint(model, str(path), weights_only=False)
    assert torch.load is original  # restored after the error


def test_load_file_messages(tmp_path: Path) -> None:
    (tmp_path / "page.pt").write_text("<html>quota exceeded</html>")
    with pytest.raises(CheckpointError, match="truncated or HTML"):
        load_checkpoint(tmp_path / "page.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    torch.save({"best_acc": np.float64(0.5), "args": __import__("argparse").Namespace(lr=0.1)}, tmp_path / "n.pt")
    out = load_weights_file(tmp_path / "n.pt")
    assert out["best_acc"] == 0.5 and out["args"].lr == 0.1
