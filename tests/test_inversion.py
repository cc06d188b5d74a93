"""Representation inversion on S_U and S_L (``robust-distill invert``; Engstrom et al. 2019, Sec. 3): the
representation hook, the inversion itself on a model whose representation is invertible by hand, the samples of
the unlearnable JSON, the verdict's statistics, and the command line."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from robust_distill.analysis.inversion import (
    classifier_layer,
    compare_groups,
    inversion_metrics,
    inversion_study,
    invert,
    representation,
)
from robust_distill.cli import main
from robust_distill.data.memory import to_float
from robust_distill.engine.run import build_student, model_spec
from robust_distill.errors import ConfigError, InputError
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import FORMAT

with warnings.catch_warnings():  # timm 1.0.9 touches the deprecated torch.jit.interface on import
    warnings.simplefilter("ignore", FutureWarning)
    from robust_distill_plugins.architectures import ConvNet, timm

OPTIONS = {"n_train": 24, "n_test": 8, "size": 8, "num_classes": 4, "channels": 1}


class LinearRep(nn.Module):
    """R(x) = W x (W = Q diag(1..2): orthogonal times a spread of 2, condition number 2), then a linear classifier."""

    def __init__(self, d: int = 16, classes: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.rep = nn.Linear(d, d, bias=False)
        self.rep.weight.data = (q @ torch.diag(torch.linspace(1, 2, d, dtype=torch.float64))).float()
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rep(x.flatten(1)))


def _pearson_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# -- the representation --------------------------------------------------------------------------


def test_the_hook_reads_the_classifier_input_of_a_convnet_and_of_a_timm_model() -> None:
    torch.manual_seed(0)
    net = ConvNet(num_classes=3, in_chans=1, widths=(4, 8), norm="bn").eval()
    x = torch.rand(5, 1, 8, 8)
    r, logits = representation(net, x)
    assert classifier_layer(net)[0] == "classifier"
    torch.testing.assert_close(r, net.pool(net.features(x)).flatten(1))
    torch.testing.assert_close(logits, net(x))
    # a timm model: its get_classifier() is the layer; timm's own pre-logits are the representation
    vit = timm.create_model("test_vit", num_classes=3, img_size=32).eval()
    xv = torch.rand(2, 3, 32, 32)
    assert classifier_layer(vit)[1] is vit.get_classifier()
    with torch.no_grad():
        torch.testing.assert_close(representation(vit, xv)[0],
                                   vit.forward_head(vit.forward_features(xv), pre_logits=True))


def test_get_classifier_beats_the_last_linear_and_wrappers_are_looked_through() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc, self.aux = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 1)

        def get_classifier(self) -> nn.Module:
            return self.fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.body(x)))

    class Wrapper(nn.Module):  # like the timm source's Normalized
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x - 0.5)

    net = Wrapper(Net())
    name, layer = classifier_layer(net)
    assert name == "model.fc" and layer is net.model.fc  # not aux, the last Linear registered
    x = torch.rand(3, 4)
    torch.testing.assert_close(representation(net, x)[0], torch.relu(net.model.body(x - 0.5)))
    with pytest.raises(InputError, match="no classifier layer"):
        classifier_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))


# -- the inversion -------------------------------------------------------------------------------


def test_inverting_an_invertible_linear_representation_recovers_the_image() -> None:
    model = LinearRep()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # pixels on the box's faces are recovered too
    r, _ = representation(model, x)
    torch.testing.assert_close(r, x.flatten(1) @ model.rep.weight.T)  # R(x) = W x, by hand
    history: list[float] = []
    x_inv = invert(model, x, steps=300, step_size=1.0, seed=0, history=history)
    assert x_inv.shape == x.shape and x_inv.min() >= 0 and x_inv.max() <= 1
    for a, b in zip(x_inv, x, strict=True):
        assert _pearson_by_hand(a, b) > 0.99
    assert (x_inv - x).abs().max() < 0.02
    # the representation error falls over the steps: from the noise start's to under 1% of it
    assert len(history) == 301 and history[-1] < 0.01 * history[0]
    checkpoints = history[::50]
    assert all(later < earlier for earlier, later in zip(checkpoints, checkpoints[1:], strict=False))
    # deterministic from the seed; another seed starts elsewhere
    torch.testing.assert_close(invert(model, x, steps=300, step_size=1.0, seed=0), x_inv)
    assert not torch.equal(invert(model, x, steps=3, seed=1), invert(model, x, steps=3, seed=0))


def test_the_starts_and_the_box() -> None:
    model = LinearRep()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    # zero steps return the start itself
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(invert(model, x, steps=0, seed=7, start="noise"), noise)
    torch.testing.assert_close(invert(model, x, steps=0, start="mean"), x.mean(0, keepdim=True).expand_as(x))
    other = invert(model, x, steps=0, start="other", seed=3)
    matches = [[torch.equal(o, xi) for xi in x] for o in other]
    assert all(sum(m) == 1 and not m[i] for i, m in enumerate(matches))  # each starts from another image ...
    assert sorted(m.index(True) for m in matches) == list(range(5))  # ... every image used once
    torch.testing.assert_close(invert(model, x, steps=0, start=1 - x), 1 - x)
    with pytest.raises(ConfigError, match="'blur' is not one of noise, other, mean"):
        invert(model, x, start="blur")
    # a large step leaves the box at once: the result is clipped back into [0, 1]
    far = invert(model, x, steps=5, step_size=50.0, use_best=False)
    assert far.min() >= 0 and far.max() <= 1 and ((far == 0) | (far == 1)).any()


def test_inversion_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    net = ConvNet(num_classes=3, in_chans=1, widths=(4, 8), norm="bn").train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(6, 1, 8, 8)
    x_inv = invert(net, x, steps=4, step_size=0.5)
    assert x_inv.min() >= 0 and x_inv.max() <= 1
    assert net.training and all(m.training for m in net.modules())  # its mode is given back
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # BN statistics untouched
    assert all(p.grad is None for p in net.parameters())
    assert not net.features[0]._forward_pre_hooks and not net.classifier._forward_pre_hooks  # the hook is removed


def test_metrics_by_hand() -> None:
    model = LinearRep(d=4, classes=2)
    with torch.no_grad():
        model.rep.weight.copy_(torch.eye(4))
        model.head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        model.head.bias.zero_()
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).view(1, 1, 2, 2)
    x_inv = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).view(1, 1, 2, 2)
    m = inversion_metrics(model, x, x_inv, torch.tensor([0]))
    # R = identity: ||R(x_inv) - R(x)|| / ||R(x)|| = sqrt(2) / 1; pixels (1,0,0,0) vs (0,1,0,0): r = -1/3
    assert m["rel_error"] == pytest.approx([math.sqrt(2)]) and m["l2"] == pytest.approx([math.sqrt(2)])
    assert m["pearson"] == pytest.approx([-1 / 3]) and m["feature_norm"] == pytest.approx([1.0])
    assert m["inv_correct"] == [0.0] and m["clean_correct"] == [1.0]  # logits (0, 1) for x_inv, (1, 0) for x
    assert math.isnan(inversion_metrics(model, x, torch.full_like(x, 0.5), torch.tensor([0]))["pearson"][0])


# -- the verdict ---------------------------------------------------------------------------------


def test_the_verdict_on_made_up_similarities() -> None:
    su, sl = [0.10, 0.20, 0.15, 0.05, 0.12], [0.80, 0.90, 0.85, 0.70, 0.95]
    v = compare_groups(su, sl, resamples=500)
    assert v["holds"] and v["intervals_apart"]
    assert v["mann_whitney_p"] == pytest.approx(1 / math.comb(10, 5))  # exact: the one ordering of 252 as extreme
    assert v["unlearnable"]["mean"] == pytest.approx(0.124) and v["difference"] == pytest.approx(0.124 - 0.84)
    mean = 0.124
    se = math.sqrt(sum((a - mean) ** 2 for a in su) / 4) / math.sqrt(5)
    assert v["unlearnable"]["se"] == pytest.approx(se) and v["unlearnable"]["n"] == 5
    lo, hi = v["unlearnable"]["ci95"]
    assert min(su) <= lo < mean < hi <= max(su)
    assert not compare_groups(sl, su)["holds"]  # S_U higher: the claim is the opposite
    close = compare_groups([0.5, 0.6, 0.7], [0.55, 0.65, 0.75])  # lower mean, but no evidence
    assert close["difference"] < 0 and not close["intervals_apart"] and close["mann_whitney_p"] > 0.05
    assert not close["holds"]
    # two samples each: the test cannot reach 0.05 (p = 1/6); the intervals (single points) are apart, which proves
    # nothing with two samples: no verdict
    tiny = compare_groups([0.1, 0.1], [0.9, 0.9])
    assert tiny["mann_whitney_p"] > 0.05 and tiny["intervals_apart"] and not tiny["holds"]
    # NaN similarities (constant images) are left out and counted out
    assert compare_groups([0.1, math.nan, 0.2], sl)["unlearnable"]["n"] == 2
    assert not compare_groups([math.nan], sl)["holds"]


# -- the study over the unlearnable JSON ---------------------------------------------------------


def _sets(regs, su: list[int], sl: list[int]) -> dict:
    bundle = regs.datasets.get("synthetic").load(**OPTIONS)
    return {"indices_unlearnable": su, "indices_learnable": sl,
            "labels_unlearnable": bundle.train_y[su].tolist(), "labels_learnable": bundle.train_y[sl].tolist(),
            "size_unlearnable": len(su), "size_learnable": len(sl), "n_recorded": 24,
            "data": {"dataset": "synthetic", "root": None, "options": OPTIONS}}


def test_the_study_inverts_the_training_images_at_the_json_indices(regs, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ConvNet(num_classes=4, in_chans=1, widths=(4, 8), norm="bn").eval()
    bundle = regs.datasets.get("synthetic").load(**OPTIONS)
    sets = _sets(regs, [3, 7, 10], [0, 5, 21])
    path = tmp_path / "su.json"
    path.write_text(json.dumps(sets))
    study = inversion_study(net, path, n=10, steps=3, step_size=0.5, regs=regs)
    assert study.report["indices"] == {"unlearnable": [3, 7, 10], "learnable": [0, 5, 21]}
    torch.testing.assert_close(study.originals["unlearnable"], to_float(bundle.train_x[[3, 7, 10]], "cpu"))
    torch.testing.assert_close(study.originals["learnable"], to_float(bundle.train_x[[0, 5, 21]], "cpu"))
    per = study.report["per_sample"]
    assert all(len(v) == 3 for part in per.values() for v in part.values())
    # the per-sample metrics are inversion_metrics' on those images and their inversions
    again = inversion_metrics(net, study.originals["unlearnable"], study.inverted["unlearnable"],
                              bundle.train_y[[3, 7, 10]])
    assert per["unlearnable"]["pearson"] == pytest.approx(again["pearson"])
    assert study.report["verdict"]["unlearnable"]["mean"] == pytest.approx(sum(again["pearson"]) / 3)
    # n below the sizes: n of each, drawn from the set, sorted
    two = inversion_study(net, sets, n=2, steps=1, regs=regs).report["indices"]
    assert len(two["unlearnable"]) == 2 and set(two["unlearnable"]) <= {3, 7, 10} and two["unlearnable"] == sorted(
        two["unlearnable"])
    with pytest.raises(InputError, match="differ from those it recorded"):
        inversion_study(net, {**sets, "labels_unlearnable": [(v + 1) % 4 for v in sets["labels_unlearnable"]]},
                        n=3, steps=1, regs=regs)
    with pytest.raises(InputError, match="S_U of the unlearnable file is empty"):
        inversion_study(net, _sets(regs, [], [0]), n=3, steps=1, regs=regs)
    with pytest.raises(InputError, match="indices_learnable"):
        inversion_study(net, {"indices_unlearnable": [1]}, n=3, steps=1, regs=regs)


def test_matched_classes_draw_as_many_of_each_class_from_both_sets(regs) -> None:
    net = ConvNet(num_classes=4, in_chans=1, widths=(4,), norm="none").eval()
    # synthetic labels are index % 4: S_U holds classes 0,1,2,3,0,1,2,0; S_L 1,1,2,3,3 (no class 0)
    sets = _sets(regs, [0, 1, 2, 3, 4, 5, 6, 8], [9, 13, 10, 7, 11])
    chosen = inversion_study(net, sets, n=10, steps=0, match_classes=True, regs=regs).report["indices"]
    # room per class: 1 -> min(2, 2), 2 -> min(2, 1), 3 -> min(1, 2); class 0 is not in S_L
    for key in ("unlearnable", "learnable"):
        assert sorted(i % 4 for i in chosen[key]) == [1, 1, 2, 3]
    assert {1, 5, 3} <= set(chosen["unlearnable"]) and {9, 13, 10} <= set(chosen["learnable"])
    three = inversion_study(net, sets, n=3, steps=0, match_classes=True, regs=regs).report
    assert [sorted(i % 4 for i in three["indices"][k]) for k in ("unlearnable", "learnable")] == [[1, 2, 3]] * 2
    assert three["settings"]["match_classes"] is True
    with pytest.raises(InputError, match="needs the labels"):
        inversion_study(net, {k: v for k, v in sets.items() if k != "labels_learnable"}, n=3, steps=0,
                        match_classes=True, regs=regs)


# -- the command line ----------------------------------------------------------------------------


def _checkpoint(regs, path: Path) -> str:
    info = regs.datasets.get("synthetic").info(**OPTIONS)
    torch.manual_seed(0)
    model = build_student("timm:convnet_xs", {}, info, regs)
    atomic_save({"format": FORMAT, "model": model_spec("timm:convnet_xs", {}, info),
                 "state_dict": model.state_dict()}, path)
    return f"checkpoint:{path}"


def test_cli_end_to_end_writes_the_json_the_verdict_and_the_grid(regs, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = _checkpoint(regs, tmp_path / "t.pt")
    su = tmp_path / "su.json"
    su.write_text(json.dumps(_sets(regs, [1, 2, 9, 14], [0, 4, 8])))
    out, png = tmp_path / "inv" / "inversion.json", tmp_path / "inv" / "grid.png"
    assert main(["invert", spec, "--unlearnable", str(su), "--n", "3", "--steps", "4", "--step-size", "0.5",
                 "--device", "cpu", "--out", str(out), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["model"] == spec and result["settings"]["steps"] == 4 and result["settings"]["layer"]
    assert len(result["indices"]["unlearnable"]) == 3 and result["indices"]["learnable"] == [0, 4, 8]
    assert set(result["verdict"]) >= {"holds", "mann_whitney_p", "intervals_apart", "unlearnable", "learnable"}
    md = out.with_suffix(".md").read_text()
    assert "S_U inverts worse than S_L" in md and md.strip() in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same numbers as the analysis called directly on the same model and file
    model = regs.call(regs.teacher_sources.get("checkpoint").load, str(tmp_path / "t.pt"),
                      dataset=regs.datasets.get("synthetic").info(**OPTIONS))
    direct = inversion_study(model, su, 3, steps=4, step_size=0.5, regs=regs).report
    assert result["per_sample"]["learnable"]["pearson"] == pytest.approx(direct["per_sample"]["learnable"]["pearson"])


@pytest.mark.parametrize(("args", "message"), [
    (["--n", "0"], "--n: must be an integer >= 1"),
    (["--step-size", "-1"], "--step-size: must be a finite number > 0"),
    (["--start", "blur"], "invalid choice: 'blur'"),
    (["--png", "grid.jpg"], "--png 'grid.jpg': give a .png file."),
    (["--out", "inversion.txt"], "give a .json file"),
])
def test_a_bad_argument_exits_2_with_a_message(args: list[str], message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    su = tmp_path / "su.json"
    su.write_text("{}")
    assert main(["invert", "timm:convnet_xs", "--unlearnable", str(su), *args]) == 2
    assert message in capsys.readouterr().err
