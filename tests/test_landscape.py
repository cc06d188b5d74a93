"""The weight loss landscape (Wu et al. 2020, Sec. 3.1; AdaAD Sec. 4.5, Fig. 3): filter-normalised directions
(Li et al. 2018, Sec. 4) by hand, g(0) against a hand-written PGD, the caller's model untouched, determinism, the
scale invariance that motivates filter normalisation, the sharpness summary on a hand-made curve, and the
``landscape`` command end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_distill.analysis.landscape import (
    adversarial_loss,
    craft_adversarial,
    filter_normalized_direction,
    loss_and_accuracy,
    s_grid,
    sharpness,
    weight_landscape,
)
from robust_distill.cli import main
from robust_distill.core.threat import ThreatModel
from robust_distill.engine.evaluation import chunk_seed
from robust_distill.engine.run import build_student, model_spec
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import FORMAT

THREAT = ThreatModel(eps=0.1, step_size=0.025, steps=3)


def conv_bn_linear(seed: int = 0) -> nn.Sequential:
    """1x6x6 -> conv 3x3 (3 filters, bias) -> BN -> ReLU -> linear 48 -> 4 (with bias): 166 parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))


def bias_free_relu_net(seed: int = 0) -> nn.Sequential:
    """No bias, no BatchNorm: scaling layer 0 by c > 0 and layer 2 by 1/c gives the same function."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 10, bias=False), nn.ReLU(), nn.Linear(10, 4, bias=False))


def images(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


# -- the direction ---------------------------------------------------------------------------------


def test_direction_has_each_filters_weight_norm_and_zero_on_1d_parameters() -> None:
    model = conv_bn_linear()
    with torch.no_grad():
        model[0].weight[1].zero_()  # a dead filter: its direction is zero too
    d = filter_normalized_direction(model, torch.Generator().manual_seed(5))
    assert list(d) == [n for n, _ in model.named_parameters()]
    raw = torch.Generator().manual_seed(5)  # the draws, by hand: the >= 2-D parameters in order
    raw_conv, raw_linear = torch.randn(3, 1, 3, 3, generator=raw), torch.randn(4, 48, generator=raw)
    w_conv, w_linear = model[0].weight.detach(), model[4].weight.detach()
    for i in range(3):
        assert d["0.weight"][i].norm().item() == pytest.approx(w_conv[i].norm().item(), rel=1e-5)
        expected = raw_conv[i] * w_conv[i].norm() / raw_conv[i].norm()
        torch.testing.assert_close(d["0.weight"][i], expected)
    assert torch.equal(d["0.weight"][1], torch.zeros(1, 3, 3))
    for i in range(4):  # a linear layer's filter is an output neuron's row
        assert d["4.weight"][i].norm().item() == pytest.approx(w_linear[i].norm().item(), rel=1e-5)
        torch.testing.assert_close(d["4.weight"][i], raw_linear[i] * w_linear[i].norm() / raw_linear[i].norm())
    for name in ("0.bias", "1.weight", "1.bias", "4.bias"):
        assert torch.equal(d[name], torch.zeros_like(dict(model.named_parameters())[name])), name


def test_grid_is_symmetric_and_holds_zero_exactly() -> None:
    assert s_grid(5, 1.0) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert s_grid(11, 0.5)[5] == 0.0 and s_grid(11, 0.5)[0] == -0.5 and s_grid(11, 0.5)[-1] == 0.5


# -- g(s) -------------------------------------------------------------------------------------------


def hand_pgd_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, float]:
    """Madry's PGD written out: uniform start in the ball clipped to [0, 1], sign steps, projection; CE mean."""
    eps, alpha = THREAT.eps, THREAT.step_size
    torch.manual_seed(chunk_seed(seed, 0))
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(THREAT.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        logits = model(x_adv)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def test_g0_is_the_adversarial_loss_of_a_hand_written_pgd() -> None:
    model, (x, y) = conv_bn_linear().eval(), images()
    ls = weight_landscape(model, x, y, THREAT, directions=2, points=5, seed=3, batch_size=64)
    loss, acc = hand_pgd_loss(model, x, y, seed=3)
    assert ls.loss_0 == pytest.approx(loss, rel=1e-5) and ls.accuracy_0 == pytest.approx(acc)
    assert [row[2] for row in ls.loss] == [ls.loss_0, ls.loss_0]  # s = 0 is the centre of every direction
    assert adversarial_loss(model, x, y, THREAT, seed=3, batch_size=64)[0] == pytest.approx(loss, rel=1e-5)


def perturbed(model: nn.Module, direction: dict[str, torch.Tensor], s: float) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.add_(s * direction[name])
    return out.eval()


def test_every_point_regenerates_pgd_at_the_perturbed_weights_or_reuses_the_s0_examples() -> None:
    model, (x, y) = conv_bn_linear().eval(), images()
    ls = weight_landscape(model, x, y, THREAT, directions=2, points=5, s_max=0.8, seed=4)
    fixed = weight_landscape(model, x, y, THREAT, directions=2, points=5, s_max=0.8, seed=4, on_the_fly=False)
    gen = torch.Generator().manual_seed(4)  # directions drawn in turn from one generator
    d0, d1 = filter_normalized_direction(model, gen), filter_normalized_direction(model, gen)
    x_adv_0 = craft_adversarial(model, x, y, THREAT, seed=4)
    for k, d in enumerate((d0, d1)):
        for j, s in enumerate(s_grid(5, 0.8)):
            at = perturbed(model, d, s)
            assert ls.loss[k][j] == pytest.approx(adversarial_loss(at, x, y, THREAT, seed=4)[0], rel=1e-5)
            assert fixed.loss[k][j] == pytest.approx(loss_and_accuracy(at, x_adv_0, y)[0], rel=1e-5)
    assert fixed.loss_0 == ls.loss_0 and fixed.loss[0] != ls.loss[0]


def test_the_callers_model_and_rng_are_unchanged_and_the_same_seed_gives_the_same_numbers() -> None:
    model, (x, y) = conv_bn_linear().train(), images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = weight_landscape(model, x, y, THREAT, directions=2, points=3, seed=7)
    assert torch.equal(torch.rand(3), expected_draw)  # PGD's starts come from a forked RNG
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN statistics too
    again = weight_landscape(model, x, y, THREAT, directions=2, points=3, seed=7)
    other = weight_landscape(model, x, y, THREAT, directions=2, points=3, seed=8)
    assert again.loss == first.loss and again.accuracy == first.accuracy
    assert other.loss != first.loss


@pytest.mark.parametrize("c", [2.0, 3.0])
def test_filter_normalised_landscape_is_invariant_to_rescaling_a_relu_layer(c: float) -> None:
    """f(x) = W2 relu(W1 x) = (W2 / c) relu(c W1 x): the same network, and filter normalisation scales the
    direction of each layer with its weights, so the normalised landscape is the same (Li et al., Sec. 4)."""
    model, (x, y) = bias_free_relu_net().eval(), images()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[1].weight.mul_(c)
        scaled[3].weight.div_(c)
    a = weight_landscape(model, x, y, THREAT, directions=2, points=5, seed=0)
    b = weight_landscape(scaled, x, y, THREAT, directions=2, points=5, seed=0)
    if c == 2.0:  # powers of two scale floats exactly: the same bits
        assert a.loss == b.loss
    else:
        torch.testing.assert_close(torch.tensor(b.loss), torch.tensor(a.loss), rtol=1e-4, atol=1e-6)
    # a raw (unnormalised) Gaussian direction is not invariant: the motivation for filter normalisation
    raw = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) for n, p in model.named_parameters()}
    raw_a = adversarial_loss(perturbed(model, raw, 0.5), x, y, THREAT)[0]
    raw_b = adversarial_loss(perturbed(scaled, raw, 0.5), x, y, THREAT)[0]
    assert abs(raw_a - raw_b) > 1e-3


# -- the summary ------------------------------------------------------------------------------------


def test_sharpness_of_a_hand_made_curve() -> None:
    s = [-1.0, -0.5, 0.0, 0.5, 1.0]
    bowl = [1 + 2 * v * v for v in s]  # (g(a) + g(-a))/2 - g(0) = 2 a^2 on the grid
    slope = [1 + v for v in s]  # antisymmetric: rises 0 at every level
    out = sharpness(s, [bowl, slope], 1.0, [0.25, 0.5, 1.0])
    # |s| = 0.25 is between grid points: g(+-0.25) = (g(0) + g(+-0.5)) / 2 -> the bowl rises 0.25
    assert out["0.25"] == pytest.approx({"mean": 0.125, "std": math.sqrt(2 * 0.125 ** 2), "max": 0.25})
    assert out["0.5"] == pytest.approx({"mean": 0.25, "std": math.sqrt(2 * 0.25 ** 2), "max": 0.5})
    assert out["1"] == pytest.approx({"mean": 1.0, "std": math.sqrt(2), "max": 2.0})


def test_bad_settings_name_the_valid_choices() -> None:
    model, (x, y) = conv_bn_linear(), images()
    with pytest.raises(ConfigError, match=r"points: expected an odd integer >= 3.*got 4") as info:
        weight_landscape(model, x, y, THREAT, points=4, s_max=1.0, levels=[1.5])
    assert "levels: expected values in (0, s_max = 1]" in str(info.value)


# -- the command --------------------------------------------------------------------------------------

SYNTH = {"n_train": 16, "n_test": 24, "size": 8, "num_classes": 4}


def save_checkpoint(path, regs) -> None:
    bundle = regs.datasets.get("synthetic").load(**SYNTH)
    torch.manual_seed(0)
    model = build_student("timm:convnet_xs", {}, bundle.info, regs)
    atomic_save({"format": FORMAT, "model": model_spec("timm:convnet_xs", {}, bundle.info),
                 "state_dict": model.state_dict(), "epoch": 1,
                 "config": {"data": {"dataset": "synthetic", "root": None, "options": SYNTH},
                            "threat": {"eps": 0.1, "step_size": 0.05, "steps": 2}}}, path)


def test_landscape_command_end_to_end(regs, tmp_path, capsys) -> None:
    from robust_distill.api import resolve_model

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "best.pt", regs)
    save_checkpoint(run / "last.pt", regs)
    out, png = tmp_path / "ls.json", tmp_path / "ls.png"
    assert main(["landscape", str(run), str(run / "last.pt"), "--n-examples", "10", "--directions", "2",
                 "--points", "5", "--s-max", "0.5", "--device", "cpu", "--out", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    st = data["settings"]
    assert (st["eps"], st["step_size"], st["steps"], st["dataset"], st["n_examples"]) == (0.1, 0.05, 2, "synthetic",
                                                                                            10)
    assert st["levels"] == [0.125, 0.25, 0.5] and st["on_the_fly"] is True
    assert [m["model"] for m in data["models"]] == [f"checkpoint:{run / 'best.pt'}", str(run / "last.pt")]
    best, last = data["models"]
    assert best["s"] == [-0.5, -0.25, 0.0, 0.25, 0.5] and len(best["loss"]) == 2 and len(best["loss"][0]) == 5
    # g(0): the checkpoint's adversarial loss at its training threat, on the first 10 test images
    model, _, _ = resolve_model(str(run / "best.pt"), {}, None, regs)
    bundle = regs.datasets.get("synthetic").load(**SYNTH)
    x, y = bundle.test_x[:10].float() / 255, bundle.test_y[:10]
    expected = adversarial_loss(model, x, y, ThreatModel(eps=0.1, step_size=0.05, steps=2))[0]
    assert best["loss_0"] == pytest.approx(expected, rel=1e-5)
    assert last["loss"] == best["loss"]  # the same weights, the same numbers
    assert set(best["sharpness"]) == {"0.125", "0.25", "0.5"}
    printed = capsys.readouterr().out
    assert "sharpness at |s|=0.5" in printed and "PGD-2" in printed
    assert png.stat().st_size > 1000


def test_landscape_command_rejects_bad_arguments_with_exit_2(regs, tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, regs)
    assert main(["landscape", str(ckpt), "--points", "4", "--levels", "0.5,2", "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "--points: expected an odd integer >= 3" in err and "e.g. 11 or 21, got 4" in err
    assert "--levels: expected values in (0, s_max = 1]" in err and "got 0.5,2" in err
    assert main(["landscape", str(ckpt), "--directions", "0"]) == 2
    assert "--directions" in capsys.readouterr().err
    assert main(["landscape", str(ckpt), "--levels", "a,b"]) == 2
    assert "expected numbers separated by commas" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
