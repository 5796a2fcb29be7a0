"""CIFAR ResNets: exact parameter counts, option A shortcuts, akamaster's layout and init, shapes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mtd_cache.core.errors import MtdError
from mtd_cache.models.resnet_cifar import (
    RESNETS,
    BasicBlock,
    OptionAShortcut,
    build_resnet,
    count_parameters,
    resnet_cifar,
)


def expected_parameters(depth: int, in_channels: int = 3, num_classes: int = 10) -> int:
    """Worked out by hand: stem conv + BN, 3 stages of n blocks (two 3x3 convs + two BNs), linear."""
    n = (depth - 2) // 6
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731  (3x3, no bias)
    block = lambda c_in, c_out: conv(c_in, c_out) + conv(c_out, c_out) + 4 * c_out  # noqa: E731  (2 BNs)
    stem = conv(in_channels, 16) + 2 * 16
    stages = sum(block(c_in, c_out) + (n - 1) * block(c_out, c_out) for c_in, c_out in ((16, 16), (16, 32), (32, 64)))
    return stem + stages + 64 * num_classes + num_classes


@pytest.mark.parametrize("name, count", [("resnet8", 75_290), ("resnet20", 269_722), ("resnet110", 1_727_962)])
def test_exact_parameter_counts(name, count):
    # ResNet-8 by hand: 432 + 32 (stem) + 4,672 + 13,952 + 55,552 (stages) + 650 (linear) = 75,290.
    assert expected_parameters(RESNETS[name]) == count
    assert count_parameters(build_resnet(name, 3, 10)) == count


def test_counts_follow_channels_and_classes():
    assert count_parameters(resnet_cifar(20, in_channels=1, num_classes=7)) == expected_parameters(20, 1, 7)
    assert 269_722 - count_parameters(resnet_cifar(20, 1, 10)) == 2 * 9 * 16  # two fewer input planes


@pytest.mark.parametrize("depth", [8, 20, 110])
def test_depth_counts_weighted_layers(depth):
    """akamaster's "Total layers": the weights of more than one dimension, i.e. convs plus the linear layer."""
    assert sum(p.dim() > 1 for p in resnet_cifar(depth).parameters()) == depth


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = torch.randn(2, 16, 8, 8)
    out = OptionAShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4) and not list(OptionAShortcut(16, 32, 2).parameters())
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # planes // 4 = 8 zero channels on each side
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_shortcuts_only_where_the_shape_changes():
    net = resnet_cifar(20)
    kinds = [type(b.shortcut) for stage in (net.layer1, net.layer2, net.layer3) for b in stage]
    assert kinds == [nn.Identity] * 3 + [OptionAShortcut, nn.Identity, nn.Identity] * 2
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules())  # no option B


def test_block_adds_the_shortcut_before_the_last_relu():
    block = BasicBlock(16, 16).eval()
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        inner = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        assert torch.equal(block(x), torch.relu(inner + x))


def test_akamaster_names_and_shapes():
    sd = resnet_cifar(20).state_dict()
    assert list(sd)[:2] == ["conv1.weight", "bn1.weight"] and list(sd)[-2:] == ["linear.weight", "linear.bias"]
    assert sd["layer2.0.conv1.weight"].shape == (32, 16, 3, 3) and sd["layer3.2.conv2.weight"].shape == (64, 64, 3, 3)
    assert not any("shortcut" in k for k in sd)  # option A has no state


def test_kaiming_normal_init_on_convs_and_linear():
    torch.manual_seed(0)
    net = resnet_cifar(20)
    w = torch.cat([m.weight.flatten() for m in net.layer3.modules() if isinstance(m, nn.Conv2d)][1:])
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.02)  # fan-in 576, gain sqrt(2)
    assert abs(w.mean().item()) < 2e-3
    assert net.linear.weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.15)
    assert torch.equal(net.bn1.weight, torch.ones(16)) and not net.bn1.bias.any()
    torch.manual_seed(0)
    assert torch.equal(resnet_cifar(20).layer2[2].conv1.weight, net.layer2[2].conv1.weight)  # seeded


@pytest.mark.parametrize("channels, size, depth", [(1, 8, 8), (1, 28, 14), (3, 32, 20)])
def test_forward_shape(channels, size, depth):
    net = resnet_cifar(depth, in_channels=channels, num_classes=10).eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(MtdError, match=r"unknown model 'resnet21'; choose one of resnet8, resnet14, resnet20"):
        build_resnet("resnet21")
    with pytest.raises(MtdError, match="resnet110"):
        build_resnet("wide_resnet")


@pytest.mark.parametrize("depth", [21, 2, 0, -4, 7])
def test_depth_not_6n_plus_2(depth):
    with pytest.raises(MtdError, match=rf"depth {depth} is not 6n\+2"):
        resnet_cifar(depth)


def test_named_depths():
    assert RESNETS["resnet8"] == 8 and RESNETS["resnet20"] == 20 and RESNETS["resnet110"] == 110
    assert all((d - 2) % 6 == 0 for d in RESNETS.values())
