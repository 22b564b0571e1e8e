"""Model registry: ``@register("name")`` on a factory ``(num_classes) -> nn.Module``.

* ``resnet50``: CIFAR-style ResNet50 (bottleneck blocks [3, 4, 6, 3], 3x3 stride-1 stem, no
  max-pool), 23.5 M parameters for 10 classes.
* ``simple_cnn``: a small 4-conv network with BatchNorm, fast on CPU.
* ``simple_cnn_nobn``: the same without BatchNorm (conv biases instead). Its output for a sample
  does not depend on the other samples of the batch, so N ranks with batch b and one process
  with batch N*b compute the same gradient: the model used by the DDP exactness test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ModelFactory = Callable[[int], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}

__all__ = ["available_models", "build_model", "count_parameters", "register"]


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {available_models()}")
    return _REGISTRY[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- ResNet50 (CIFAR variant)
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        nn.init.zeros_(self.bn3.weight)  # each residual branch starts as identity
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(Bottleneck(in_planes, planes, stride))
                in_planes = planes * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@register("resnet50")
def resnet50(num_classes: int) -> nn.Module:
    return ResNet([3, 4, 6, 3], num_classes)


# ---------------------------------------------------------------- SimpleCNN
class SimpleCNN(nn.Module):
    """conv(3->w) pool conv(w->2w) pool conv(2w->4w) pool conv(4w->4w) avgpool fc."""

    def __init__(self, num_classes: int, width: int = 32, batch_norm: bool = True) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)
            norm: nn.Module = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
            return [conv, norm, nn.ReLU(inplace=True)]

        w = width
        self.features = nn.Sequential(
            *block(3, w),
            nn.MaxPool2d(2),  # 16x16
            *block(w, 2 * w),
            nn.MaxPool2d(2),  # 8x8
            *block(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 4x4
            *block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@register("simple_cnn")
def simple_cnn(num_classes: int) -> nn.Module:
    return SimpleCNN(num_classes, batch_norm=True)


@register("simple_cnn_nobn")
def simple_cnn_nobn(num_classes: int) -> nn.Module:
    return SimpleCNN(num_classes, batch_norm=False)
