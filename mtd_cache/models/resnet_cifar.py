"""CIFAR ResNets of He et al. (2016), section 4.2: depth 6n+2, widths 16/32/64, option A shortcuts.

Option A: when a block halves the resolution and doubles the width, the
shortcut subsamples with stride 2 and zero-pads the new channels — no
parameters (He et al.; akamaster/pytorch_resnet_cifar10 ``LambdaLayer``).
Initialisation as akamaster's: Kaiming-normal on every Conv2d and Linear.
With 3 input channels and 10 classes: ResNet-20 has 269,722 trainable
parameters, ResNet-110 1,727,962 (tests check both).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MtdError

RESNETS = {f"resnet{d}": d for d in (8, 14, 20, 32, 44, 56, 110, 1202)}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2 if stride != 1 or c_in != c_out else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))  # option A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise MtdError(f"ResNet depth {depth} is not of the form 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_resnet(name: str, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """``resnet20`` etc.; any ``resnet<6n+2>`` works, the named ones are listed in errors."""
    if not name.startswith("resnet") or not name[6:].isdigit():
        raise MtdError(f"unknown model {name!r}; choose one of {', '.join(RESNETS)}")
    return CifarResNet(int(name[6:]), in_channels, num_classes)
