"""The specialization paper's parts against hand-computed values: the input-subspace PCA and projections,
epsilon_in / epsilon_out, the oracle losses, the oracle / in-plane / out-of-plane attacks, pruning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_distill import Step, ThreatModel
from robust_distill.analysis.subspace import (
    InputSubspace,
    choose_k,
    epsilon_analysis,
    epsilon_matrices,
    fit_input_subspace,
    node_weights,
    oracle_robustness,
    pearson,
    pgd_restarts,
    select_by_subspace,
)
from robust_distill.core.losses import squared_l2
from robust_distill.engine.evaluation import make_eval_attacks
from robust_distill.engine.pruning import prune_inactive_channels, scaled_widths, select_active
from robust_distill_plugins.specialization_models import TeacherStudentConvNet

EPS = 0.1


def line_images() -> torch.Tensor:
    """2-channel 3x3 images whose pixels (c0, c1) lie on the line (0.2, 0.1) + t (1, 2), t in {0, .1, .2, .3}."""
    t = torch.tensor([0.0, 0.1, 0.2, 0.3]).repeat(9)[:9].reshape(1, 1, 3, 3)
    t = torch.cat([t, t.roll(1, -1)])  # two images, the same pixel values in another order
    return torch.cat([0.2 + t, 0.1 + 2 * t], dim=1)


def test_pca_of_pixels_on_a_line_recovers_the_line_and_projects_by_hand() -> None:
    x = line_images()
    sub = fit_input_subspace(x, kernel_size=1, k=None, explained_variance=0.99)
    t = x[:, 0].flatten() - 0.2
    assert sub.dim == 2 and sub.k == 1  # all the variance is along (1, 2)
    assert sub.basis[:, 0] == pytest.approx(torch.tensor([1.0, 2.0]) / math.sqrt(5), abs=1e-6)
    assert sub.mean == pytest.approx(torch.tensor([0.2 + t.mean(), 0.1 + 2 * t.mean()]), abs=1e-6)
    var = 5 * t.var(unbiased=False)  # ||(1, 2)||^2 var(t)
    assert sub.eigenvalues == pytest.approx(torch.tensor([float(var), 0.0]), abs=1e-6)
    v = torch.tensor([1.0, 0.0])
    assert sub.project_in(v) == pytest.approx(torch.tensor([0.2, 0.4]), abs=1e-6)  # (v.u) u = (1/5)(1, 2)
    assert sub.project_out(v) == pytest.approx(torch.tensor([0.8, -0.4]), abs=1e-6)
    # an image whose every pixel is mean + c (2, -1): squared residual 5 c^2 per patch
    img = sub.mean.view(1, 2, 1, 1) + 0.03 * torch.tensor([2.0, -1.0]).view(1, 2, 1, 1) * torch.ones(1, 2, 4, 4)
    assert sub.out_distance(img) == pytest.approx(torch.tensor([5 * 0.03 ** 2]), rel=1e-4)
    assert sub.out_distance(x) == pytest.approx(torch.zeros(2), abs=1e-10)  # the data lie in the subspace


def test_patches_are_flattened_like_the_convolution_weights() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = torch.rand(2, 3, 9, 9)
    sub = fit_input_subspace(x, conv, k=4)
    assert (sub.kernel_size, sub.stride, sub.padding, sub.dim) == ((3, 3), (2, 2), (1, 1), 27)
    with torch.no_grad():
        by_patch = sub.patches(x) @ conv.weight.reshape(5, -1).T + conv.bias  # (B, L, out)
        torch.testing.assert_close(by_patch.transpose(1, 2).reshape(2, 5, 5, 5), conv(x), atol=1e-5, rtol=0)
    assert sub.basis.T @ sub.basis == pytest.approx(torch.eye(4), abs=1e-5)  # orthonormal


def test_choose_k_by_count_or_explained_variance() -> None:
    ev = torch.tensor([6.0, 3.0, 0.9, 0.1])
    assert choose_k(ev, explained_variance=0.9) == 2 and choose_k(ev, explained_variance=0.95) == 3
    assert choose_k(ev, explained_variance=1.0) == 4 and choose_k(ev, k=1) == 1
    with pytest.raises(ValueError, match="between 1 and the patch dimension 4"):
        choose_k(ev, k=5)


def test_subspace_file_roundtrip_and_with_k(tmp_path) -> None:
    torch.manual_seed(0)
    sub = fit_input_subspace(torch.rand(4, 1, 8, 8), kernel_size=3, k=3)
    loaded = InputSubspace.load(sub.save(tmp_path / "s.pt"))
    assert torch.equal(loaded.basis, sub.basis) and loaded.kernel_size == (3, 3) and loaded.k == 3
    five = loaded.with_k(5)
    assert five.k == 5 and torch.equal(five.basis[:, :3], sub.basis) and five.with_k(9).basis.shape == (9, 9)
    with pytest.raises(ValueError, match="k must be between 1 and 9"):
        loaded.with_k(10)
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an input-subspace file"):
        InputSubspace.load(tmp_path / "bad.pt")


def e1_subspace() -> InputSubspace:
    return InputSubspace(torch.zeros(2), torch.tensor([[1.0], [0.0]]), torch.tensor([1.0, 0.0]), 1, 2, (1, 1))


def test_epsilon_in_and_out_of_two_nodes_by_hand() -> None:
    student, teacher = torch.tensor([[2.0, 2.0]]), torch.tensor([[3.0, 0.0]])  # 45 degrees apart
    eps_in, eps_out = epsilon_matrices(student, teacher, e1_subspace())
    # dw = (1/sqrt2, 1/sqrt2) - (1, 0): inside span(e1) 1/sqrt2 - 1, outside 1/sqrt2
    assert eps_in.item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert eps_out.item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert eps_in.item() ** 2 + eps_out.item() ** 2 == pytest.approx(2 - math.sqrt(2), abs=1e-6)  # ||dw||^2


def test_epsilon_analysis_pairs_each_teacher_node_with_its_best_nc_student() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    rho = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.1, 0.95]])  # teacher 0 <- student 0, teacher 1 <- student 2
    stats = epsilon_analysis(student, teacher, e1_subspace(), rho)
    eps_in, eps_out = epsilon_matrices(student, teacher, e1_subspace())
    assert stats.best_student == [0, 2]
    assert stats.curve_in == sorted([eps_in[0, 0].item(), eps_in[2, 1].item()])
    assert stats.curve_out == sorted([eps_out[0, 0].item(), eps_out[2, 1].item()])
    assert stats.pearson_in == pytest.approx(pearson(rho, eps_in))
    a, b = rho.flatten().double(), eps_in.flatten().double()
    by_hand = ((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()).norm() * (b - b.mean()).norm())
    assert stats.pearson_in == pytest.approx(by_hand.item(), abs=1e-9)
    summary = stats.summary()
    assert [p["student_node"] for p in summary["pairs"]] == [0, 2] and summary["pairs"][1]["nc"] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="NC matrix has shape"):
        epsilon_analysis(student, teacher, e1_subspace(), rho[:2])


def test_node_weights_fold_a_following_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([-1.0, 3.0]))
        model[1].running_var.copy_(torch.tensor([3.0, 8.0]))
    eps = model[1].eps
    expected = torch.tensor([[-1.0 / math.sqrt(3 + eps)], [6.0 / math.sqrt(8 + eps)]])
    assert node_weights(model) == pytest.approx(expected)  # the first node's direction flips (gamma < 0)
    assert node_weights(model, fold_batchnorm=False) == pytest.approx(torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError, match="its convolutions are: 0"):
        node_weights(model, "features.0")


# -------------------------------------------------------------------------------------------------
# Oracle losses and attacks
# -------------------------------------------------------------------------------------------------


def convnet(seed: int, widths=(8, 8, 8, 8)) -> TeacherStudentConvNet:
    torch.manual_seed(seed)
    model = TeacherStudentConvNet(num_classes=3, in_chans=1, widths=widths, kernel_sizes=3, strides=1)
    with torch.no_grad():
        out = model(torch.rand(16, 1, 10, 10, generator=torch.Generator().manual_seed(1)))
    assert out.std(0).min() > 1e-4, "a test network whose output does not depend on its input"
    return model


def oracle_step(seed: int = 0) -> Step:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 10, 10, generator=g)
    teacher = convnet(1).eval().requires_grad_(False)
    return Step(x, torch.zeros(6, dtype=torch.long), student=convnet(2).train(), teachers={"oracle": teacher},
                threat=ThreatModel(eps=EPS, step_size=0.03, steps=3))


def test_squared_l2_by_hand() -> None:
    s, t = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert squared_l2(s, t, reduction="none").tolist() == [5.0, 3.0]
    assert squared_l2(s, t, reduction="batchmean").item() == pytest.approx(4.0)
    assert squared_l2(s, t, reduction="mean").item() == pytest.approx(8.0 / 6)  # nn.MSELoss()
    assert squared_l2(s, t, reduction="mean").item() == pytest.approx(F.mse_loss(s, t).item())


def test_logit_and_label_losses_by_hand(regs) -> None:
    step = oracle_step()
    step.add_input("adv", step.x + 0.05)
    s_logits, t_logits = step.student(step.x + 0.05), step.teachers["oracle"](step.x + 0.05)
    logit = regs.outer_losses.build("logit_l2", {})(step)
    assert logit.item() == pytest.approx(((s_logits - t_logits) ** 2).sum(1).mean().item() / 3, rel=1e-5)  # /C
    per_sample = regs.outer_losses.build("logit_l2", {"reduction": "batchmean"})(step)
    assert per_sample.item() == pytest.approx(((s_logits - t_logits) ** 2).sum(1).mean().item(), rel=1e-5)
    label = regs.outer_losses.build("label_ce", {})(step)
    log_p = torch.log_softmax(s_logits, 1)
    by_hand = -log_p[torch.arange(6), t_logits.argmax(1)].mean()
    assert label.item() == pytest.approx(by_hand.item(), rel=1e-5)
    label.backward()
    assert all(p.grad is None for p in step.teachers["oracle"].parameters())  # the oracle is a fixed target


@pytest.mark.parametrize("kwargs", [{}, {"loss": "ce"}, {"target": "teacher_clean"}, {"start": "gaussian"}])
def test_oracle_pgd_stays_in_the_ball_and_raises_the_disagreement(regs, kwargs: dict) -> None:
    step = oracle_step()
    student, teacher = step.student, step.teachers["oracle"]
    x_adv = regs.inner_attacks.build("oracle_pgd", kwargs)(step)
    assert (x_adv - step.x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert student.training and all(p.grad is None and p.requires_grad for p in student.parameters())
    with torch.no_grad():
        student.eval()
        target = teacher(step.x) if kwargs.get("target") == "teacher_clean" else teacher(x_adv)  # what it maximises
        if kwargs.get("loss") == "ce":
            gap = F.cross_entropy(student(x_adv), target.argmax(1))
            before = F.cross_entropy(student(step.x), teacher(step.x).argmax(1))
        else:
            gap = squared_l2(student(x_adv), target, reduction="batchmean")
            before = squared_l2(student(step.x), teacher(step.x), reduction="batchmean")
    assert gap > before


def test_oracle_pgd_backpropagates_through_the_teacher_only_with_teacher_adv(regs) -> None:
    out = {}
    for target in ("teacher_adv", "teacher_clean"):
        torch.manual_seed(0)
        out[target] = regs.inner_attacks.build("oracle_pgd", {"target": target})(oracle_step())
    assert not torch.equal(out["teacher_adv"], out["teacher_clean"])
    with pytest.raises(ValueError, match="kl_pgd"):
        regs.inner_attacks.build("oracle_pgd", {"loss": "kl"})


def test_gaussian_noise_has_the_asked_deviation_and_clips_only_if_asked(regs) -> None:
    step = oracle_step()
    step.inputs["clean"] = torch.full((64, 1, 16, 16), 0.5)
    torch.manual_seed(0)
    noisy = regs.inner_attacks.build("gaussian_noise", {"sigma": 0.1})(step)
    delta = noisy - step.x
    assert delta.std().item() == pytest.approx(0.1, rel=0.02) and abs(delta.mean().item()) < 0.002
    torch.manual_seed(0)
    assert torch.equal(regs.inner_attacks.build("gaussian_noise", {"sigma": 0.1})(step), noisy)  # global RNG
    step.inputs["clean"] = torch.zeros(8, 1, 4, 4)
    assert regs.inner_attacks.build("gaussian_noise", {"sigma": 0.5})(step).min() < 0
    assert regs.inner_attacks.build("gaussian_noise", {"sigma": 0.5, "clip": True})(step).min() >= 0


def test_select_by_subspace_picks_per_sample() -> None:
    sub = e1_subspace()  # 2-channel pixels; distance = mean over pixels of (channel 1)^2
    a = torch.zeros(3, 2, 2, 2)
    b = torch.zeros(3, 2, 2, 2)
    a[:, 1] = torch.tensor([0.1, 0.3, 0.0]).view(3, 1, 1)
    b[:, 1] = torch.tensor([0.2, 0.1, 0.0]).view(3, 1, 1)
    b[:, 0] = 1.0  # inside the subspace: does not count
    assert sub.out_distance(a) == pytest.approx(torch.tensor([0.01, 0.09, 0.0]))
    inside, outside = select_by_subspace([a, b], sub, "in"), select_by_subspace([a, b], sub, "out")
    assert torch.equal(inside[0], a[0]) and torch.equal(inside[1], b[1])
    assert torch.equal(outside[0], b[0]) and torch.equal(outside[1], a[1])
    assert torch.equal(inside[2], a[2]) and torch.equal(outside[2], a[2])  # ties keep the first


@pytest.mark.parametrize("keep", ["in", "out"])
def test_subspace_inner_attack_keeps_the_restart_closer_or_farther(regs, keep: str) -> None:
    step = oracle_step()
    torch.manual_seed(3)
    x_sel = regs.inner_attacks.build("subspace_pgd", {"keep": keep, "k": 3})(step)
    torch.manual_seed(3)
    attack = regs.inner_attacks.build("oracle_pgd", {})
    with attack.attack_context(step):
        cands = pgd_restarts(attack.make_objective(step), step.x, restarts=2, eps=EPS, step_size=0.03, steps=3)
    sub = fit_input_subspace(step.x, step.student.convs[0], k=3)
    d = torch.stack([sub.out_distance(c) for c in cands])
    expected = torch.stack(cands)[d.argmin(0) if keep == "in" else d.argmax(0), torch.arange(6)]
    assert torch.equal(x_sel, expected)
    assert (x_sel - step.x).abs().max() <= EPS + 1e-6 and 0 <= x_sel.min() and x_sel.max() <= 1
    assert step.student.training and all(p.requires_grad for p in step.student.parameters())


def test_inplane_and_outplane_eval_attacks_split_one_two_restart_pgd(regs) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 10, 10, generator=g), torch.randint(0, 3, (8,), generator=g)
    model = convnet(0).eval()
    attacks = make_eval_attacks(["pgd20_inplane", "pgd20_outplane"], regs, ThreatModel(eps=EPS), num_classes=3)
    x_in, x_out = attacks["pgd20_inplane"](model, x, y), attacks["pgd20_outplane"](model, x, y)
    for xa in (x_in, x_out):
        assert (xa - x).abs().max() <= EPS + 1e-6 and 0 <= xa.min() and xa.max() <= 1
    torch.manual_seed(0)
    cands = pgd_restarts(lambda xa: F.cross_entropy(model(xa), y, reduction="sum"), x, restarts=2, eps=EPS,
                         step_size=EPS / 4, steps=20)
    sub = fit_input_subspace(x, model.convs[0], explained_variance=0.99)
    assert sub.out_distance(x_in).le(sub.out_distance(x_out) + 1e-9).all()
    for i in range(8):  # {x_in, x_out} are the two restarts of PGD-20 from seed 0
        pair = {x_in[i].numpy().tobytes(), x_out[i].numpy().tobytes()}
        assert pair <= {c[i].numpy().tobytes() for c in cands}
    assert "in-plane" in attacks["pgd20_inplane"].label


def test_oracle_robustness_of_a_model_against_itself_and_another() -> None:
    x = torch.rand(12, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    teacher = convnet(1)
    sub = fit_input_subspace(x, teacher.convs[0], k=4)
    same = oracle_robustness(teacher, teacher, x, eps=EPS, step_size=0.03, steps=3, subspace=sub)
    # a model agrees with itself wherever the oracle attacks go; the data attack targets the clean label T(x)
    assert {k: v for k, v in same.items() if k != "data"} == {"clean": 1.0, "oracle": 1.0, "oracle_in": 1.0,
                                                              "oracle_out": 1.0}
    assert same["data"] < 1.0  # a random network is not robust to its own labels
    student = convnet(2)
    other = oracle_robustness(student, teacher, x, eps=0.3, step_size=0.1, steps=5, subspace=sub)
    assert other["oracle"] <= min(other["oracle_in"], other["oracle_out"])  # "both" counts a point robust to each
    assert max(other["oracle_in"], other["oracle_out"], other["data"]) <= other["clean"]
    with torch.no_grad():
        assert other["clean"] == pytest.approx((student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item())


# -------------------------------------------------------------------------------------------------
# Pruning
# -------------------------------------------------------------------------------------------------


def test_pruning_removes_exactly_the_channels_with_no_fanout() -> None:
    model = convnet(0, widths=(5, 4, 4, 3)).eval()
    with torch.no_grad():
        model.convs[1].weight[:, [1, 3]] = 0.0  # layer 0 channels 1 and 3 feed nothing
        model.fc.weight[:, 2] = 0.0  # the last layer's channel 2 feeds nothing
    norms = model.fanout_norms()
    assert norms[0][[1, 3]].tolist() == [0.0, 0.0] and norms[3][2] == 0
    assert norms[3][0] == pytest.approx(model.fc.weight[:, 0].norm().item())
    small, options, report = prune_inactive_channels(model, threshold=1e-6)
    assert options == {"widths": [3, 4, 4, 2]} and report["kept"][0] == [0, 2, 4]
    x = torch.rand(4, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-6, rtol=0)  # the same function
    top = select_active(norms, widths=[2, 4, 4, 3])[0]
    assert top.tolist() == sorted(norms[0].argsort(descending=True)[:2].tolist())
    with pytest.raises(TypeError, match="does not support channel pruning"):
        prune_inactive_channels(nn.Linear(2, 2), threshold=0.1)


def test_student_widths_are_1_1x_the_pruned_teacher() -> None:
    assert scaled_widths([45, 32, 32, 20], 1.1) == [50, 35, 35, 22]  # the paper's student


# -------------------------------------------------------------------------------------------------
# Engine options, the oracle dataset, methods and commands end to end
# -------------------------------------------------------------------------------------------------


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for v in state.values()])


def test_clip_grad_norm_bounds_every_update(tiny_config, regs) -> None:
    from robust_distill.engine.run import build_student, load_data
    from robust_distill.engine.trainer import _seed_everything, train
    from robust_distill.files.checkpoint import load_checkpoint

    def run(clip: float | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = tiny_config(overrides=["optim.epochs=1", "optim.momentum=0", "optim.weight_decay=0",
                                     f"optim.clip_grad_norm={'null' if clip is None else clip}", f"output_dir={name}"])
        _seed_everything(cfg.seed)  # the engine builds the student right after seeding (data use their own RNG)
        start = build_student(cfg.student.key, cfg.student.kwargs, load_data(cfg, regs).info, regs).state_dict()
        train(cfg, regs=regs, resume=False)
        end = load_checkpoint(f"{name}/last.pt")["state_dict"]
        keys = [k for k in start if "running" not in k and "num_batches" not in k]  # parameters only
        return _flat({k: start[k] for k in keys}), _flat({k: end[k] for k in keys})

    steps, lr, clip = 4, 0.05, 1e-3  # 64 training images in batches of 16
    before, after = run(clip, f"{tiny_config().output_dir}-clip")
    assert 0 < (after - before).norm() <= steps * lr * clip * (1 + 1e-4)
    before, after = run(None, f"{tiny_config().output_dir}-free")
    assert (after - before).norm() > 100 * steps * lr * clip
    with pytest.raises(Exception, match="clip_grad_norm must be > 0"):
        tiny_config(overrides=["optim.clip_grad_norm=0"])


def test_save_epochs_keeps_the_student_of_those_epochs(tiny_config, regs) -> None:
    from robust_distill.engine.trainer import train
    from robust_distill.errors import ConfigError
    from robust_distill.files.checkpoint import load_checkpoint

    cfg = tiny_config(save_epochs=[1])
    train(cfg, regs=regs, resume=False)
    out = cfg.output_dir
    stopped = tiny_config(output_dir=f"{out}-stopped")
    train(stopped, regs=regs, resume=False, stop_after_epochs=1)
    kept = load_checkpoint(f"{out}/epoch_1.pt")
    assert kept["epoch"] == 1
    for k, v in load_checkpoint(f"{out}-stopped/last.pt")["state_dict"].items():
        assert torch.equal(kept["state_dict"][k], v), k
    assert sorted(p.name for p in Path(out).glob("epoch_*.pt")) == ["epoch_1.pt"]
    with pytest.raises(ConfigError, match=r"save_epochs: \[3\] outside 1..2"):
        tiny_config(save_epochs=[3])


def _save_teacher(path, regs, widths=(6, 5, 5, 4)) -> str:
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import build_student, model_spec
    from robust_distill.files.atomic import atomic_save
    from robust_distill.files.checkpoint import FORMAT

    info = DatasetInfo("synthetic", 4, (1, 10, 10))
    kwargs = {"widths": list(widths), "kernel_sizes": [3, 3, 3, 3], "strides": [1, 1, 1, 1]}
    torch.manual_seed(0)
    model = build_student("timm:tsconv4_teacher", kwargs, info, regs)
    atomic_save({"format": FORMAT, "model": model_spec("timm:tsconv4_teacher", kwargs, info),
                 "state_dict": model.state_dict(), "epoch": 1, "config": {}}, path)
    return str(path)


SYNTH = {"n_train": 96, "n_test": 32, "size": 10, "num_classes": 4, "channels": 1}


def test_oracle_dataset_labels_every_image_with_the_teacher(regs, tmp_path) -> None:
    from robust_distill.files.checkpoint import build_from_checkpoint

    path = _save_teacher(tmp_path / "t.pt", regs)
    teacher, _ = build_from_checkpoint(path, regs)
    data = regs.call(regs.datasets.get("oracle").load, base="synthetic", teacher=f"checkpoint:{path}",
                     base_options=SYNTH)
    base = regs.datasets.get("synthetic").load(**SYNTH)
    assert torch.equal(data.train_x, base.train_x) and data.info.name == "oracle" and data.info.num_classes == 4
    with torch.no_grad():
        assert torch.equal(data.train_y, teacher(base.train_x.float() / 255).argmax(1))
        assert torch.equal(data.test_y, teacher(base.test_x.float() / 255).argmax(1))
    with pytest.raises(ValueError, match="needs data.options.teacher"):
        regs.call(regs.datasets.get("oracle").info, base="synthetic")


ORACLE_METHODS = ["oracle_logit", "oracle_label", "oracle_adv", "oracle_logit_gaussian", "inplane_at", "outplane_at"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ORACLE_METHODS)
def test_oracle_methods_train_from_yaml_on_teacher_labels(regs, tiny_raw, tmp_path, method: str) -> None:
    from robust_distill.config import resolve_config
    from robust_distill.engine.trainer import train

    path = _save_teacher(tmp_path / "t.pt", regs)
    raw = tiny_raw(method)
    raw["data"] = {**raw["data"], "dataset": "oracle",
                   "options": {"base": "synthetic", "teacher": f"checkpoint:{path}", "base_options": SYNTH}}
    raw.update(teachers={"oracle": f"checkpoint:{path}"}, student={"key": "timm:tsconv4_student", "kwargs": {
        "widths": [7, 6, 6, 4], "kernel_sizes": 3, "strides": 1}})
    raw["eval"] = {**raw["eval"], "attacks": ["clean", "pgd20", "pgd20_inplane", "pgd20_outplane"]}
    summary = train(resolve_config(raw, regs), regs=regs, resume=False)
    row = summary["best"]
    assert set(row) == {"val_clean", "val_pgd20", "val_pgd20_inplane", "val_pgd20_outplane"}
    assert all(0 <= v <= 1 for v in row.values())


@pytest.mark.slow
def test_prune_and_specialization_commands_end_to_end(regs, tiny_raw, tmp_path, capsys) -> None:
    import json

    import yaml

    from robust_distill.cli import main

    raw = tiny_raw("natural")
    raw["data"]["options"] = SYNTH
    raw["student"] = {"key": "timm:tsconv4_teacher", "kwargs": {"widths": [6, 5, 5, 4], "kernel_sizes": 3,
                                                                "strides": 1}}
    raw["output_dir"] = str(tmp_path / "teacher")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "t.yaml")]) == 0
    pruned = tmp_path / "pruned.pt"
    assert main(["prune", str(tmp_path / "teacher" / "last.pt"), "--widths", "4,3,3,2", "--out", str(pruned)]) == 0
    report = json.loads(pruned.with_suffix(".json").read_text())
    assert report["widths_after"] == [4, 3, 3, 2] and report["student_widths"] == [4, 3, 3, 2]
    assert report["check_images"] == 32 and 0 <= report["prediction_changes"] <= 1
    assert "6-5-5-4 -> 4-3-3-2" in capsys.readouterr().out
    out = tmp_path / "spec"
    assert main(["specialization", "--teacher", str(pruned), "--student", str(tmp_path / "teacher" / "last.pt"),
                 "--layers", "acts.0=acts.0,acts.3=acts.3", "--n-examples", "16", "--pca-k", "4", "--robustness",
                 "--eps", "0.1", "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads((out / "specialization.json").read_text())
    eps = data["epsilon"]
    assert eps["k"] == 4 and eps["dim"] == 9 and len(eps["curve_eps_in"]) == 4  # one per pruned teacher node
    assert eps["curve_eps_in"] == sorted(eps["curve_eps_in"]) and -1 <= eps["pearson_nc_eps_in"] <= 1
    assert set(data["robustness"]) == {"clean", "oracle", "oracle_in", "oracle_out", "data"}
    assert InputSubspace.load(out / "input_subspace.pt").k == 4
    for png in ("sorted_bnc.png", "input_spectrum.png", "epsilon_vs_nc.png", "epsilon_curves.png"):
        assert (out / png).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "Pearson(NC, epsilon_in)" in printed and "Agreement with the teacher" in printed
