"""Architectures by name, and a user's own class.

Every model takes float images in [0, 1] (N x C x H x W) and returns logits.

Names (``build_model(name, num_classes, in_channels, image_size, **kwargs)``):
- ``cnn``: a small conv net with BatchNorm, for 28x28 and 32x32 inputs.
- ``preact_resnet18``: the CIFAR-style pre-activation ResNet-18 used by ANP and RNP
  (``width`` multiplies the 64 base channels; ``final_bn=False``: BackdoorBench's, without the
  last BatchNorm).
- ``resnet18``: the CIFAR-style ResNet-18 (3x3 stem, no max-pool) with BN shortcuts, ``width``.
- ``vgg11_bn``: VGG-11 with BatchNorm, ``width`` multiplier.
- ``mlp_head``: a frozen ``cnn`` feature extractor and an MLP head without BatchNorm (the
  Hölder-pruning setting); only the head's Linear layers are trainable.
- ``tv:NAME``: a torchvision classifier by name, untrained (e.g. ``tv:resnet18``).
- ``path/to/file.py:ClassName``: a user's class, built with the keyword arguments given.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F


class ModelError(ValueError):
    """A model could not be built; the message is one sentence."""


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 32,
                 hidden: int = 128):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 16, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """``final_bn=False`` is BackdoorBench's variant: no BatchNorm and ReLU before the pooling,
    its state dict key for key (``defenses.readers.backdoorbench``)."""

    def __init__(self, num_classes=10, in_channels=3, image_size=32, width: float = 1.0, final_bn: bool = True):
        super().__init__()
        c = [max(4, int(round(v * width))) for v in (64, 128, 256, 512)]
        self.in_planes = c[0]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.layer1 = self._make(c[0], 1)
        self.layer2 = self._make(c[1], 2)
        self.layer3 = self._make(c[2], 2)
        self.layer4 = self._make(c[3], 2)
        self.bn = nn.BatchNorm2d(c[3]) if final_bn else None
        self.linear = nn.Linear(c[3], num_classes)

    def _make(self, planes, stride):
        layers = []
        for s in (stride, 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, image_size=32, width: float = 1.0):
        super().__init__()
        c = [max(4, int(round(v * width))) for v in (64, 128, 256, 512)]
        self.in_planes = c[0]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.layer1 = self._make(c[0], 1)
        self.layer2 = self._make(c[1], 2)
        self.layer3 = self._make(c[2], 2)
        self.layer4 = self._make(c[3], 2)
        self.linear = nn.Linear(c[3], num_classes)

    def _make(self, planes, stride):
        layers = []
        for s in (stride, 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class VGGBN(nn.Module):
    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)

    def __init__(self, num_classes=10, in_channels=3, image_size=32, width: float = 1.0):
        super().__init__()
        layers, c_in = [], in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c = max(4, int(round(v * width)))
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class MLPHeadModel(nn.Module):
    """A frozen feature extractor (a SmallCNN trunk) and a trainable MLP head without BN.

    The extractor's parameters have ``requires_grad=False`` and it always runs in eval mode, so
    training the whole model only trains the head, the threat model of Hölder pruning."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width: int = 32, hidden=(256, 128)):
        super().__init__()
        self.extractor = SmallCNN(num_classes, in_channels, image_size, width).features
        self.extractor.requires_grad_(False)
        dims = [2 * width * 16, *hidden]
        head = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            head += [nn.Linear(a, b), nn.ReLU()]
        head.append(nn.Linear(dims[-1], num_classes))
        self.head = nn.Sequential(*head)

    def train(self, mode: bool = True):
        super().train(mode)
        self.extractor.eval()
        return self

    def forward(self, x):
        return self.head(self.extractor(x))


ARCHITECTURES = {
    "cnn": SmallCNN,
    "preact_resnet18": PreActResNet18,
    "resnet18": ResNet18,
    "vgg11_bn": VGGBN,
    "mlp_head": MLPHeadModel,
}


def architectures_fitting(state: dict, num_classes: int, in_channels: int, image_size: int,
                          skip: str = "") -> list[str]:
    """The built-in architectures whose parameter names are exactly the checkpoint's, for the
    message on a checkpoint that does not fit the one chosen; ``"vgg11_bn (another width)"``
    when the names fit but the shapes do not (the width is an architecture argument)."""
    keys = {k for k in state if not k.endswith("num_batches_tracked")}
    out = []
    for name in ARCHITECTURES:
        if name == skip:
            continue
        try:
            expected = build_model(name, num_classes, in_channels, image_size).state_dict()
        except (ModelError, RuntimeError, ValueError):
            continue
        if {k for k in expected if not k.endswith("num_batches_tracked")} != keys:
            continue
        same = all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items() if k in state)
        out.append(name if same else f"{name} (another width)")
    return out


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    """Build an (untrained) model by architecture name; see the module docstring."""
    if name in ARCHITECTURES:
        try:
            return ARCHITECTURES[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        except TypeError as e:
            raise ModelError(f"Architecture {name!r} does not take these settings: {e}.") from None
    if name.startswith("tv:"):
        return _torchvision_model(name[3:], num_classes, in_channels, **kwargs)
    if ".py:" in name:
        return load_user_class(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    raise ModelError(f"Unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}, tv:NAME or path/to/file.py:ClassName.")


def _torchvision_model(name, num_classes, in_channels, **kwargs):
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"torchvision has no classifier {name!r} taking these settings ({e}).") from None
    if in_channels != 3:
        # Swap the stem's first conv for the input's channel count; keep everything else.
        for mod_name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels == 3:
                new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                                bias=mod.bias is not None)
                parent = model.get_submodule(mod_name.rsplit(".", 1)[0]) if "." in mod_name else model
                setattr(parent, mod_name.rsplit(".", 1)[-1], new)
                break
    return model


def load_user_class(spec: str, num_classes: int | None = None, in_channels: int | None = None,
                    **kwargs) -> nn.Module:
    """Import ``path/to/file.py:ClassName`` from the user's own disk and instantiate it, passing
    ``num_classes`` and ``in_channels`` when its constructor takes them (by those names, or any
    ``**kwargs``) and the user's own keywords as they are.

    This executes the user's file, so it is only offered for paths on the local machine, never
    for an uploaded file."""
    path, _, cls_name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise ModelError(f"No Python file at {path}; give the architecture as path/to/file.py:ClassName.")
    mod_name = f"prunescope_user_{abs(hash(os.path.abspath(path)))}"
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file may raise anything while importing
        sys.modules.pop(mod_name, None)
        raise ModelError(f"Importing {path} failed with {type(e).__name__}: {e}.") from None
    cls = getattr(module, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ModelError(f"{path} has no nn.Module subclass named {cls_name!r}.")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and key not in kwargs and (key in params or takes_any):
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except Exception as e:
        raise ModelError(f"Building {cls_name} from {path} failed with {type(e).__name__}: {e}.") from None
