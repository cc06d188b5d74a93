"""The teacher and student networks of the specialization paper, in timm's registry.

Yang et al., AISTATS 2021, Sec. 5.1: "both the teacher and student model [are] 4-layer Conv ReLU networks.
We train the teacher with channel size 64-64-64-64 at first, and then reduce it to be 45-32-32-20 by
pruning the inactivated channels. For the student model, we set it to be 1.1x scale to the pruned teacher
model (i.e. channel size 50-35-35-22) ... kernel size s = 3."

* ``tsconv4_teacher``: four conv + ReLU layers (no normalisation), widths 64-64-64-64, then global average
  pooling and a linear classifier;
* ``tsconv4_student``: the same with widths 50-35-35-22.

The paper gives neither strides nor the head; here the head is global average pooling + linear, and
``kernel_sizes``, ``strides`` and ``padding`` are options (defaults: 3x3, stride 1, no padding, so the
lowest layer sees the 30x30 valid 3x3 patches of a 32x32 image, as in Sec. 5.3). The Fashion-MNIST
benchmark (``benchmarks/specialization``) uses a 5x5 lowest layer (25-dimensional patches, like CIFAR's
3x3x3 = 27) and strides 1-2-2-1 to fit a CPU. Both networks implement
:class:`robust_distill.engine.pruning.Prunable`: ``robust-distill prune`` removes inactive channels by fan-out norm.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

with warnings.catch_warnings():  # timm 1.0.9 touches the deprecated torch.jit.interface on import
    warnings.simplefilter("ignore", FutureWarning)
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

PAPER_TEACHER = (64, 64, 64, 64)
PAPER_PRUNED = (45, 32, 32, 20)
PAPER_STUDENT = (50, 35, 35, 22)


class TeacherStudentConvNet(nn.Module):
    """``depth`` x (Conv2d + ReLU), global average pooling, linear (Yang et al. 2021, Sec. 5.1).

    :param widths: channels of each conv layer (their number is the depth; 4 in the paper, 5 in its Fig. 5).
    :param kernel_sizes: / ``strides``: one per layer, or one for all.
    :param padding: zero padding of every convolution (0: valid convolutions).

    Nodes are the outputs of ``acts.<l>`` (post-ReLU), the layers ``convs.<l>``; ``convs.0`` is the lowest.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = PAPER_TEACHER,
                 kernel_sizes: int | Sequence[int] = 3, strides: int | Sequence[int] = 1, padding: int = 0,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        depth = len(self.widths)
        ks = (int(kernel_sizes),) * depth if isinstance(kernel_sizes, int) else tuple(int(k) for k in kernel_sizes)
        st = (int(strides),) * depth if isinstance(strides, int) else tuple(int(s) for s in strides)
        if depth < 1 or any(w < 1 for w in self.widths) or len(ks) != depth or len(st) != depth:
            raise ValueError(f"widths {widths!r}, kernel_sizes {kernel_sizes!r} and strides {strides!r} must give "
                             "one positive value per layer")
        self.kernel_sizes, self.strides, self.padding = ks, st, int(padding)
        self.in_chans, self.num_classes = in_chans, num_classes
        cin = in_chans
        self.convs = nn.ModuleList()
        for w, k, s in zip(self.widths, ks, st, strict=True):
            self.convs.append(nn.Conv2d(cin, w, k, s, self.padding))
            cin = w
        self.acts = nn.ModuleList(nn.ReLU() for _ in self.widths)  # not in place: hooks see the conv outputs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)
        for conv in self.convs:  # He initialisation: without normalisation layers, PyTorch's default shrinks the
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # signal layer by layer, and logit
            nn.init.zeros_(conv.bias)  # training then starts on a long plateau

    def forward(self, x: Tensor) -> Tensor:
        for conv, act in zip(self.convs, self.acts, strict=True):
            x = act(conv(x))
        return self.fc(self.drop(self.pool(x).flatten(1)))

    # -- robust_distill.engine.pruning.Prunable ---------------------------------------------------------
    def fanout_norms(self) -> list[Tensor]:
        """Per layer, the L2 norm of each channel's outgoing weights (next conv's input slice; the
        classifier's column for the last layer)."""
        out = []
        for layer in range(len(self.convs)):
            nxt = self.convs[layer + 1].weight if layer + 1 < len(self.convs) else self.fc.weight[:, :, None, None]
            out.append(nxt.detach().transpose(0, 1).reshape(nxt.shape[1], -1).norm(dim=1))
        return out

    @torch.no_grad()
    def pruned(self, keep: Sequence[Tensor]) -> tuple[TeacherStudentConvNet, dict[str, Any]]:
        """A copy with the channels ``keep[l]`` of each layer (outputs change only by the removed channels'
        contributions)."""
        if len(keep) != len(self.convs):
            raise ValueError(f"keep needs one index tensor per layer ({len(self.convs)}), got {len(keep)}")
        widths = [int(k.numel()) for k in keep]
        small = TeacherStudentConvNet(self.num_classes, self.in_chans, widths, self.kernel_sizes, self.strides,
                                      self.padding, self.drop.p).to(self.fc.weight)
        prev = torch.arange(self.in_chans)
        for src, dst, k in zip(self.convs, small.convs, keep, strict=True):
            k = k.to(torch.long)
            dst.weight.copy_(src.weight[k][:, prev])
            dst.bias.copy_(src.bias[k])
            prev = k
        small.fc.weight.copy_(self.fc.weight[:, prev])
        small.fc.bias.copy_(self.fc.bias)
        return small, {"widths": widths}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"num_classes": 10, "input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
            "first_conv": "convs.0", "classifier": "fc", "license": "mit", **kwargs}


default_cfgs = generate_default_cfgs({"tsconv4_teacher.untrained": _cfg(), "tsconv4_student.untrained": _cfg()})


@register_model
def tsconv4_teacher(pretrained: bool = False, **kwargs: Any) -> TeacherStudentConvNet:
    """The specialization paper's teacher before pruning: 4 x (conv 3x3 + ReLU), widths 64-64-64-64."""
    kwargs.setdefault("widths", PAPER_TEACHER)
    return build_model_with_cfg(TeacherStudentConvNet, "tsconv4_teacher", pretrained, **kwargs)


@register_model
def tsconv4_student(pretrained: bool = False, **kwargs: Any) -> TeacherStudentConvNet:
    """The specialization paper's student: 1.1x the pruned teacher, widths 50-35-35-22."""
    kwargs.setdefault("widths", PAPER_STUDENT)
    return build_model_with_cfg(TeacherStudentConvNet, "tsconv4_student", pretrained, **kwargs)
