"""RobustBench teachers offline: the real ``robustbench.utils.load_model`` on a locally placed file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robust_distill import DatasetInfo, ThreatModel
from robust_distill._compat import import_robustbench
from robust_distill.config import resolve_config
from robust_distill.engine.trainer import train
from robust_distill.errors import ConfigError
from robust_distill_plugins.robustbench_teachers import LogProbabilities, RobustBenchTeachers

from .conftest import needs_robustbench

SMALL = "Gowal2021Improving_R18_ddpm_100m"  # DMPreActResNet-18, 12.5M parameters
CIFAR10 = DatasetInfo("cifar10", 10, (3, 32, 32))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<model_dir>/cifar10/Linf/<SMALL>.pt`` holding a randomly initialised copy of the architecture."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset
    from robustbench.model_zoo.enums import ThreatModel as RBThreatModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = model_dicts[BenchmarkDataset("cifar10")][RBThreatModel("Linf")][SMALL]["model"]()
    (root / "cifar10" / "Linf").mkdir(parents=True)
    torch.save(model.state_dict(), root / "cifar10" / "Linf" / f"{SMALL}.pt")
    return root


@needs_robustbench
def test_robustbench_imports_with_the_compat_shims() -> None:
    rb = import_robustbench()
    assert hasattr(rb.utils, "load_model")


@needs_robustbench
def test_loads_a_local_file_without_network(model_dir: Path) -> None:
    teacher = RobustBenchTeachers().load(SMALL, dataset=CIFAR10, model_dir=str(model_dir), offline=True)
    assert not teacher.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = teacher(x)
    assert out.shape == (2, 10) and not torch.allclose(out.softmax(1).sum(1), torch.zeros(2))
    saved = torch.load(model_dir / "cifar10" / "Linf" / f"{SMALL}.pt", weights_only=True)
    first = next(k for k in saved if k.endswith("weight"))
    assert torch.equal(dict(teacher.state_dict())[first], saved[first])  # the file's weights, not fresh ones


@needs_robustbench
def test_missing_file_offline_says_which_file_to_place_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        RobustBenchTeachers().load("Chen2021LTD_WRN34_10", dataset=CIFAR10, model_dir=str(tmp_path), offline=True)
    msg = str(e.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Chen2021LTD_WRN34_10.pt") in msg and "Google Drive id" in msg


@needs_robustbench
def test_failed_download_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rb = import_robustbench()

    def fail(name, model_dir, **kw):
        target = Path(model_dir) / "cifar10" / "Linf" / f"{name}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"<html>quota exceeded")  # what a failed Google Drive download leaves
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(rb.utils, "load_model", fail)
    with pytest.raises(RuntimeError, match="Downloading Chen2021LTD_WRN34_10 failed .* place"):
        RobustBenchTeachers().load("Chen2021LTD_WRN34_10", dataset=CIFAR10, model_dir=str(tmp_path))
    assert not list(tmp_path.rglob("*.pt"))


@needs_robustbench
def test_unknown_names_list_the_gowal_and_chen_families() -> None:
    with pytest.raises(ValueError) as e:
        RobustBenchTeachers().check("Chen2021LTD_WRN34_11", dataset=CIFAR10)
    msg = str(e.value)
    assert "Close matches: Chen2021LTD_WRN34_10" in msg and "Gowal2020Uncovering_70_16_extra" in msg
    with pytest.raises(ValueError, match="RobustBench has no 'fashion_mnist' models"):
        RobustBenchTeachers().check("Chen2021LTD_WRN34_10", dataset=DatasetInfo("fashion_mnist", 10, (1, 28, 28)))


@needs_robustbench
def test_every_gowal_and_chen_linf_entry_is_known() -> None:
    names = RobustBenchTeachers().names()
    for expected in ["Gowal2020Uncovering_70_16 (cifar10)", "Gowal2021Improving_R18_ddpm_100m (cifar10)",
                     "Chen2021LTD_WRN34_20 (cifar10)", "Chen2020Adversarial (cifar10)",
                     "Gowal2020Uncovering (cifar100)", "Chen2021LTD_WRN34_10 (cifar100)"]:
        assert expected in names


@needs_robustbench
def test_probability_outputs_become_log_probabilities(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rb = import_robustbench()

    class Probs(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.7, 0.2, 0.1]]).expand(x.shape[0], 3)

    monkeypatch.setattr(rb.utils, "load_model", lambda *a, **k: Probs().eval())
    for i in range(3):  # the ensemble's three files, so that the offline check passes
        (tmp_path / "cifar10" / "Linf").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cifar10" / "Linf" / f"Chen2020Adversarial.pt_m{i}.pt").write_bytes(b"")
    teacher = RobustBenchTeachers().load("Chen2020Adversarial", dataset=CIFAR10, model_dir=str(tmp_path))
    assert isinstance(teacher, LogProbabilities)
    out = teacher(torch.zeros(2, 3, 32, 32))
    assert torch.allclose(out.softmax(1), torch.tensor([[0.7, 0.2, 0.1]] * 2), atol=1e-6)


@needs_robustbench
@pytest.mark.slow
def test_distil_from_a_robustbench_teacher_on_local_cifar(tiny_raw, regs, model_dir: Path, tiny_cifar: Path) -> None:
    raw = tiny_raw("rslad", teacher=True)
    raw["data"] = {"dataset": "cifar10", "root": str(tiny_cifar), "options": {"download": False}, "val_size": 8,
                   "batch_size": 16}
    raw["teachers"] = {"robust": {"key": f"robustbench:{SMALL}",
                                  "kwargs": {"model_dir": str(model_dir), "offline": True}}}
    raw["optim"]["epochs"] = 1
    raw["eval"] = {"n_examples": 8, "attacks": ["clean"], "select": "clean"}
    summary = train(resolve_config(raw, regs))
    assert summary["best_epoch"] == 0
    raw["teachers"]["robust"]["kwargs"]["model_dir"] = str(model_dir / "elsewhere")
    with pytest.raises(ConfigError, match="are not on disk: place"):
        resolve_config(raw, regs)


@needs_robustbench
@pytest.mark.slow
def test_our_autoattack_equals_robustbench_benchmark_on_the_same_examples(regs) -> None:
    from robust_distill._compat import robustbench_benchmark
    from robust_distill.engine.evaluation import evaluate, make_eval_attacks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 10)).eval()
    with torch.no_grad():  # labels = its own predictions, some flipped: misclassified points
        x = torch.rand(24, 3, 8, 8)
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    eps = 1 / 255
    clean_rb, adv_rb = robustbench_benchmark(model, x, y, eps=eps, batch_size=16)
    attacks = make_eval_attacks(["clean", "autoattack"], regs, ThreatModel(eps=eps), num_classes=10)
    attacks["autoattack"].batch_size = 16
    ours = evaluate(model, x, y, attacks, batch_size=16).accuracy
    assert ours["clean"] == pytest.approx(clean_rb) and ours["autoattack"] == pytest.approx(adv_rb)
    assert ours["autoattack"] < ours["clean"]


@pytest.mark.slow
def test_autoattack_apgd_runs_the_first_two_stages_of_autoattack_standard(regs) -> None:
    """Same seed and settings: a point APGD-CE + APGD-T breaks, AutoAttack breaks too (it runs them first)."""
    from robust_distill.engine.evaluation import evaluate, make_eval_attacks

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 10)).eval()
    with torch.no_grad():
        x = torch.rand(24, 3, 8, 8)
        y = model(x).argmax(1)
    attacks = make_eval_attacks(["autoattack", "autoattack_apgd"], regs, ThreatModel(eps=1 / 255), num_classes=10)
    assert "apgd-ce + apgd-t" in attacks["autoattack_apgd"].label
    res = evaluate(model, x, y, attacks, batch_size=24)
    full, apgd = res.correct["autoattack"], res.correct["autoattack_apgd"]
    assert apgd.sum() < len(y) and not (full & ~apgd).any()


@needs_robustbench
@pytest.mark.slow
def test_robustbench_imports_where_setuptools_no_longer_ships_pkg_resources() -> None:
    """setuptools >= 81 has no ``pkg_resources``; robustbench 1.1.1 imports it: _compat's stub stands in."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['pkg_resources'] = None\n"  # as if setuptools >= 81 were installed
            "from robust_distill._compat import import_robustbench\n"
            "rb = import_robustbench()\n"
            "import pkg_resources, robustbench.loaders\n"
            "print(pkg_resources.resource_filename('robustbench', 'x').endswith('robustbench/x'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
