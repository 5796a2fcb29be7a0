"""CIFAR ResNets of He et al. (2016, section 4.2): depth 6n+2, widths 16/32/64, option A shortcuts.

Sources: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016 (arXiv:1512.03385), section 4.2; Y. Idelbayev,
akamaster/pytorch_resnet_cifar10 ``resnet.py``, the PyTorch reference that
has the paper's parameter counts. What is matched, and where we differ:

- Layout: 3x3 conv (16) + BN + ReLU, then three stages of n basic blocks
  (16, 32, 64 channels; the first block of stages 2 and 3 has stride 2),
  global average pooling, a linear classifier. 6n + 2 weighted layers.
- Basic block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU. Convs have no bias.
- Option A shortcut: where a block changes the shape, the shortcut takes every
  second pixel and zero-pads the new channels, half before and half after the
  old ones: no parameters. akamaster writes it as a ``LambdaLayer`` padding
  ``planes // 4`` channels on each side; ``OptionAShortcut`` pads
  ``(out - in) // 2``, the same for 16->32->64, and is a named module, so the
  model pickles and deep-copies (a lambda does not).
- Init: ``kaiming_normal_`` (fan-in, gain sqrt(2)) on every Conv2d and Linear
  weight, applied after construction in module order as akamaster's
  ``self.apply(_weights_init)``; BN weight 1 / bias 0 and the Linear bias keep
  PyTorch's defaults. Modules are created in akamaster's order and carry its
  names (``conv1``, ``bn1``, ``layer1..3``, ``linear``), so a seeded build
  draws the same weights and akamaster's checkpoints load (drop ``module.``).
- Pooling: ``avg_pool2d`` with the whole (H, W) map as kernel: akamaster's
  ``avg_pool2d(out, out.size()[3])`` on square maps, bit for bit (adaptive
  pooling sums in another order, ~1e-7 apart), and a true global average on
  non-square ones.
- ``in_channels`` and ``num_classes`` are configurable (1-channel 8x8 digits,
  28x28 Fashion-MNIST); any input size works, the stages halve it twice.

Trainable parameters with 3 channels and 10 classes: ResNet-8 75,290;
ResNet-20 269,722; ResNet-110 1,727,962 (tests check these).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import MtdError
from .names import RESNETS

WIDTHS = (16, 32, 64)  # channels of the three stages (He et al. 2016, section 4.2)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by ``stride``, zero-pad channels c_in -> c_out (He et al. option A)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.before = (c_out - c_in) // 2
        self.after = c_out - c_in - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))  # the last pair pads the channel axis

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels=({self.before}, {self.after})"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (akamaster's ``BasicBlock``, option A)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        reshapes = stride != 1 or c_in != c_out
        self.shortcut = OptionAShortcut(c_in, c_out, stride) if reshapes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _kaiming_init(m: nn.Module) -> None:
    """akamaster's ``_weights_init``: Kaiming-normal (fan-in, gain sqrt(2)) on Conv2d and Linear weights."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth 6n+2 (He et al. 2016, section 4.2); see the module docstring."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        n = blocks_per_stage(depth)
        if in_channels < 1 or num_classes < 1:
            raise MtdError(f"ResNet needs in_channels >= 1 and num_classes >= 1, got {in_channels} and {num_classes}")
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.layer1 = _stage(WIDTHS[0], WIDTHS[0], n, stride=1)
        self.layer2 = _stage(WIDTHS[0], WIDTHS[1], n, stride=2)
        self.layer3 = _stage(WIDTHS[1], WIDTHS[2], n, stride=2)
        self.linear = nn.Linear(WIDTHS[2], num_classes)
        self.apply(_kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, out.shape[2:]).flatten(1))  # global average, kernel = map


def _stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
    """n basic blocks; only the first changes the width and the resolution."""
    return nn.Sequential(*(BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)))


def blocks_per_stage(depth: int) -> int:
    """n of depth = 6n + 2; an MtdError for any other depth."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise MtdError(f"ResNet depth {depth!r} is not 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    return (depth - 2) // 6


def resnet_cifar(depth: int, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """A CIFAR ResNet of ``depth`` = 6n+2 layers (He et al. 2016; akamaster's ``resnet.py``)."""
    return CifarResNet(depth, in_channels, num_classes)


def build_resnet(name: str, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """The ResNet named in ``RESNETS`` (``resnet20``, ``resnet110``...); an MtdError lists them for any other name."""
    if name not in RESNETS:
        raise MtdError(f"unknown model {name!r}; choose one of {', '.join(RESNETS)}")
    return resnet_cifar(RESNETS[name], in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (akamaster's ``test()``: parameters with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
