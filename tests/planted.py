"""A tiny network with one planted backdoor neuron, for asserting that a defense finds it.

Images are 1 x 4 x 4 in [0, 1]. Clean task: label 1 when the top half is brighter than the
bottom half, else 0. The last pixel is the trigger pixel: on clean images it stays in [0, 0.2];
the trigger sets it to 1 and the target label is 0.

Hidden neuron ``PLANTED`` reads only the trigger pixel (weight 10, bias -1) and votes for the
target (+4 on logit 0, -4 on logit 1). On clean images it fires weakly (up to 1) and the clean
neurons, trained with it in place, learn to compensate, as in a real backdoored network; a
triggered image drives it to 9 and flips the prediction. The clean neurons are trained for a
fraction of a second from a fixed seed; the planted row is never trained, and no clean neuron
reads the trigger pixel (so they can only compensate the planted neuron's clean firing through
their biases, not cancel the trigger itself).
"""
from __future__ import annotations

import torch
from torch import nn

from defenses.readers.data import ArraySplit

HIDDEN = 12
CLASSES = 2
PLANTED = HIDDEN - 1
TRIGGER_PIXEL = (3, 3)


class TinyNet(nn.Module):
    def __init__(self, hidden=HIDDEN):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(16, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flat(x))))


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    x[:, 0, 3, 3] = torch.rand(n, generator=g) * 0.2
    y = (x[:, 0, :2].mean((1, 2)) > x[:, 0, 2:].flatten(1)[:, :7].mean(1)).long()
    return x, y


def as_split(x, y) -> ArraySplit:
    return ArraySplit((x * 255).round().to(torch.uint8), y)


def stamp(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 0, 3, 3] = 1.0
    return x


def build_planted(seed: int = 0, steps: int = 400) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        model.fc1.weight[:, 15] = 0  # clean neurons never read the trigger pixel
        model.fc1.weight[PLANTED] = 0
        model.fc1.weight[PLANTED, 15] = 10.0
        model.fc1.bias[PLANTED] = -1.0
        model.fc2.weight[:, PLANTED] = torch.tensor([4.0, -4.0])
    x, y = make_images(2000, seed + 1)
    x, y = as_split(x, y).images(), y  # train on exactly what the defenses will see
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        model.fc1.weight.grad[PLANTED] = 0
        model.fc1.weight.grad[:, 15] = 0
        model.fc1.bias.grad[PLANTED] = 0
        model.fc2.weight.grad[:, PLANTED] = 0
        opt.step()
    return model.eval()


def clean_and_test(seed: int = 0):
    return as_split(*make_images(500, seed + 2)), as_split(*make_images(1000, seed + 3))


# ---------------------------------------------------------------- a BatchNorm variant, for RNP
#
# RNP needs what the 2-class net above lacks. Its unlearning stops at training accuracy 0.20,
# which a 2-class task never reaches by chance; so 10 classes. On a 10-class net without BN,
# gradient ascent collapsed it to one constant prediction and took the backdoor along (ASR 0 in 3
# of 5 seeds); BatchNorm keeps every unit firing on about half of each batch, and RNP's masks scale the BN
# gamma as in the paper's networks. The task is noisy (ACC about 80%), so gradient ascent leaves
# the confident regime within RNP's 20-epoch budget.

BN_SIDE = 6  # images are 1 x 6 x 6; the last pixel is the trigger pixel
BN_HIDDEN = 24
BN_CLASSES = 10
BN_PLANTED = BN_HIDDEN - 1


class TinyBNNet(nn.Module):
    def __init__(self, hidden=BN_HIDDEN):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(BN_SIDE * BN_SIDE, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, BN_CLASSES)

    def forward(self, x):
        return self.fc2(self.act(self.bn(self.fc1(self.flat(x)))))


def prototype_images(n: int, seed: int, prototypes: torch.Tensor, noise: float = 0.6) -> ArraySplit:
    """Balanced labels; each image is its class's prototype plus Gaussian noise, clipped to
    [0, 1], with the trigger pixel in [0, 0.2]."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % BN_CLASSES)[torch.randperm(n, generator=g)]
    x = (prototypes[y] + noise * torch.randn(n, BN_SIDE * BN_SIDE, generator=g)).clamp(0, 1)
    x[:, -1] = torch.rand(n, generator=g) * 0.2
    return as_split(x.view(n, 1, BN_SIDE, BN_SIDE), y)


def stamp_bn(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 0, -1, -1] = 1.0
    return x


def build_planted_bn(seed: int = 0, steps: int = 300) -> tuple[TinyBNNet, ArraySplit, ArraySplit]:
    """(model, clean set of 2,000 images, test split of 2,000). The planted BN channel reads only
    the trigger pixel (weight 10, bias -1; gamma 1, beta 0, never trained) and votes +1 for
    target 0. Its running statistics come from clean images, so a trigger drives it to about 15
    standard deviations. The clean neurons never read the trigger pixel."""
    prototypes = torch.rand(BN_CLASSES, BN_SIDE * BN_SIDE, generator=torch.Generator().manual_seed(1000 + seed))
    torch.manual_seed(seed)
    model = TinyBNNet()
    with torch.no_grad():
        model.fc1.weight[:, -1] = 0
        model.fc1.weight[BN_PLANTED] = 0
        model.fc1.weight[BN_PLANTED, -1] = 10.0
        model.fc1.bias[BN_PLANTED] = -1.0
        model.fc2.weight[:, BN_PLANTED] = 0
        model.fc2.weight[0, BN_PLANTED] = 1.0
    train = prototype_images(4000, seed + 1, prototypes)
    x, y = train.images(), train.y
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        model.fc1.weight.grad[BN_PLANTED] = 0
        model.fc1.weight.grad[:, -1] = 0
        model.fc1.bias.grad[BN_PLANTED] = 0
        model.bn.weight.grad[BN_PLANTED] = 0
        model.bn.bias.grad[BN_PLANTED] = 0
        model.fc2.weight.grad[:, BN_PLANTED] = 0
        opt.step()
    return model.eval(), prototype_images(2000, seed + 2, prototypes), prototype_images(2000, seed + 3, prototypes)
