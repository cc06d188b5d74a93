"""The WideResNets of the ARD teachers, as RobustBench defines them (random weights for benchmarks).

* :class:`WideResNet`: RobustBench's ``model_zoo/architectures/wide_resnet.py`` (the TRADES-style WRN of
  ``Chen2021LTD_WRN34_10`` and the ARD papers' WRN-34-10 teachers: pre-activation blocks, ReLU, no input
  normalisation, ``sub_block1=False``);
* :class:`DMWideResNet`: RobustBench's ``dm_wide_resnet.py`` (DeepMind's WRN-70-16 of
  ``Gowal2020Uncovering_70_16``: Swish, explicit padding of the first convolution of a block, BN momentum
  0.01, the CIFAR-10 mean/std inside the model).

Written out here (layer for layer, same parameter shapes and FLOPs) so that the GPU benchmark needs neither
RobustBench nor a download.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideResNet", "DMWideResNet", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class _Block(nn.Module):
    """Pre-activation basic block of the TRADES/RobustBench WideResNet."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equal:
            out = self.relu1(self.bn1(x))
            return x + self.conv2(self.relu2(self.bn2(self.conv1(out))))
        x = self.relu1(self.bn1(x))
        return self.shortcut(x) + self.conv2(self.relu2(self.bn2(self.conv1(x))))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` (34-10: 46.2M parameters), inputs in [0, 1], 32x32."""

    def __init__(self, depth: int = 34, num_classes: int = 10, widen_factor: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = nn.Sequential(*[_Block(ch[0] if i == 0 else ch[1], ch[1], 1) for i in range(n)])
        self.block2 = nn.Sequential(*[_Block(ch[1] if i == 0 else ch[2], ch[2], 2 if i == 0 else 1) for i in range(n)])
        self.block3 = nn.Sequential(*[_Block(ch[2] if i == 0 else ch[3], ch[3], 2 if i == 0 else 1) for i in range(n)])
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1)  # = avg_pool2d(out, 8) on 32x32 inputs
        return self.fc(out.flatten(1))


class _DMBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin, momentum=0.01), nn.SiLU()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout, momentum=0.01), nn.SiLU()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.stride = stride
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            x = self.relu_0(self.batchnorm_0(x))
            v = x
        else:
            v = self.relu_0(self.batchnorm_0(x))
        v = F.pad(v, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return out + (self.shortcut(x) if self.shortcut is not None else x)


class DMWideResNet(nn.Module):
    """DeepMind's WRN-``depth``-``width`` (70-16: 266.8M parameters), with the CIFAR-10 mean/std inside."""

    def __init__(self, num_classes: int = 10, depth: int = 70, width: int = 16) -> None:
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.init_conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        groups = []
        for g, stride in enumerate((1, 2, 2)):
            groups += [_DMBlock(ch[g] if i == 0 else ch[g + 1], ch[g + 1], stride if i == 0 else 1) for i in range(n)]
        self.layer = nn.Sequential(*groups)
        self.batchnorm, self.relu = nn.BatchNorm2d(ch[3], momentum=0.01), nn.SiLU()
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.adaptive_avg_pool2d(self.relu(self.batchnorm(out)), 1)
        return self.logits(out.flatten(1))
