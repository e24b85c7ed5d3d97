"""Do the finding rules stay quiet on healthy models trained normally? (issue 24, point 4)

Trains torchvision's ``resnet18`` and ``mobilenet_v3_small``, a small torchvision
``VisionTransformer`` and an ``nn.TransformerEncoder`` over the image's rows, each with
its usual recipe, on MNIST padded to 32×32 and repeated over 3 channels (normalised
with MNIST's mean and std), watched with ``gradscope.watch(model, optimizer=opt)``;
prints each run's test accuracy and its findings (holding and resolved: a healthy run
must end with none). ``--recipe sgd5`` is the issue's first report instead: 5 plain
SGD steps at lr 0.01.

Usage::

    python benchmarks/calibration.py                    # the stated size (below)
    python benchmarks/calibration.py --models resnet18 --steps 50
    python benchmarks/calibration.py --recipe sgd5      # 5 SGD steps at lr 0.01
    python benchmarks/calibration.py --ci --synthetic   # the CI size, no MNIST needed
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

import gradscope
from gradscope.findings import Thresholds, analyze
from gradscope.history import History
from gradscope.records import Finding

# ---------------------------------------------------------------- settings
STEPS, BATCH, SEED = 200, 32, 0  # the stated size: 200 steps of 32 images
CI_STEPS, CI_BATCH, CI_EVAL = 10, 8, 256  # the CI size (with narrow models, see build())
SIDE, CHANNELS = 32, 3  # MNIST 28×28 padded to 32×32, repeated over 3 channels
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and std (after /255)
EVAL = 2000  # test images evaluated at the end
MODELS = ("resnet18", "mobilenet_v3_small", "vit", "transformer")


@dataclass(frozen=True)
class Recipe:
    """An optimizer recipe: ``sgd`` (momentum, weight decay) or ``adamw``, with linear warm-up."""

    optimizer: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup: int = 0  # steps of linear learning-rate warm-up


#: Each model's usual recipe (SGD with momentum for the CNNs at lr 0.1 per 128 images,
#: scaled to the stated batch of 32; AdamW with warm-up for the transformers); ``sgd5``
#: is the issue's report: plain SGD, lr 0.01.
RECIPES = {
    "resnet18": Recipe("sgd", 0.025, weight_decay=5e-4),
    "mobilenet_v3_small": Recipe("sgd", 0.025, weight_decay=4e-5),
    "vit": Recipe("adamw", 1e-3, weight_decay=0.05, warmup=30),
    "transformer": Recipe("adamw", 5e-4, weight_decay=0.01, warmup=30),
}
SGD5 = Recipe("sgd", 0.01, momentum=0.0)


class RowTransformer(nn.Module):
    """``nn.TransformerEncoder`` over the image's rows: 32 tokens of 32·3 pixels each."""

    def __init__(self, d_model: int, layers: int, heads: int, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(SIDE * CHANNELS, d_model)
        self.pos = nn.Parameter(torch.zeros(1, SIDE, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).reshape(len(x), SIDE, -1)  # (N, rows, C·W)
        return self.head(self.encoder(self.embed(rows) + self.pos).mean(1))


def narrow_resnet(widths: tuple[int, ...] = (16, 32, 64, 128)) -> nn.Module:
    """resnet18's stem and torchvision's ``BasicBlock``, one block per stage, narrow (CI)."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    layers: list[nn.Module] = [nn.Conv2d(CHANNELS, widths[0], 7, 2, 3, bias=False),
                               nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    d = widths[0]
    for i, w in enumerate(widths):
        stride = 1 if i == 0 else 2
        down = None if stride == 1 and d == w else nn.Sequential(conv1x1(d, w, stride),
                                                                  nn.BatchNorm2d(w))
        layers.append(BasicBlock(d, w, stride, down))
        d = w
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, 10))
    for m in model.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def build(name: str, ci: bool) -> nn.Module:
    """The model ``name`` at the stated size, or narrow at the CI size."""
    import torchvision

    if name == "resnet18":
        return narrow_resnet() if ci else torchvision.models.resnet18(num_classes=10)
    if name == "mobilenet_v3_small":
        model = torchvision.models.mobilenet_v3_small(num_classes=10,
                                                      width_mult=0.25 if ci else 1.0)
        for m in model.modules():  # torchvision's 0.01 is for ~600 epochs: after a few
            if isinstance(m, nn.BatchNorm2d):  # hundred steps its running statistics
                m.momentum = 0.1  # are still the initial ones and eval-mode accuracy is chance
        return model
    if name == "vit":
        dim, layers = (32, 2) if ci else (128, 6)
        return torchvision.models.VisionTransformer(
            image_size=SIDE, patch_size=4, num_layers=layers, num_heads=4, hidden_dim=dim,
            mlp_dim=2 * dim, num_classes=10)
    if name == "transformer":
        return RowTransformer(*((32, 2) if ci else (128, 4)), heads=4)
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def images(x: torch.Tensor) -> torch.Tensor:
    """Flat 28×28 images in [0, 1] -> normalised (N, 3, 32, 32), padded with the background."""
    x = x.reshape(-1, 1, 28, 28)
    x = nn.functional.pad(x, (2, 2, 2, 2))
    return ((x - MEAN) / STD).expand(-1, CHANNELS, -1, -1).contiguous()


def optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer (no weight decay on biases and norms' parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": r.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if r.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum)
    return torch.optim.AdamW(groups, lr=r.lr)


@dataclass
class Outcome:
    """One run: its test accuracy, its findings at the end, its history and wall time."""

    acc: float
    findings: list[Finding]
    history: History
    seconds: float


def train(name: str, data: object, *, steps: int, batch: int, recipe: Recipe, ci: bool = False,
          seed: int = SEED, log: Optional[Callable[[str], None]] = None) -> Outcome:
    """Train ``name`` for ``steps`` steps under ``recipe``, watched; evaluate it."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build(name, ci)
    opt = optimizer(model, recipe)
    warm = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) if recipe.warmup else 1.0)
    x, y = data.x_train, data.y_train  # type: ignore[attr-defined]
    order = torch.randperm(len(x))
    model.train()
    with gradscope.watch(model, optimizer=opt, summary=False) as mon:
        for step in range(steps):
            idx = order[(step * batch) % (len(x) - batch):][:batch]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(images(x[idx])), y[idx])
            loss.backward()
            opt.step()
            warm.step()
            if log is not None and (step + 1) % 50 == 0:
                log(f"  {name} step {step + 1}: loss {loss.item():.3f}")
        found = mon.findings()
    model.eval()
    n = CI_EVAL if ci else EVAL
    with torch.no_grad():
        xt, yt = data.x_test[:n], data.y_test[:n]  # type: ignore[attr-defined]
        acc = sum((model(images(xt[i:i + 256])).argmax(1) == yt[i:i + 256]).sum().item()
                  for i in range(0, len(xt), 256)) / len(xt)
    return Outcome(acc, found, mon.history, time.perf_counter() - t0)


def main(argv: Optional[list[str]] = None) -> dict[str, Outcome]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--steps", type=int, default=None, help=f"default {STEPS} ({CI_STEPS} with --ci)")
    p.add_argument("--batch", type=int, default=None, help=f"default {BATCH} ({CI_BATCH} with --ci)")
    p.add_argument("--recipe", choices=("usual", "sgd5"), default="usual")
    p.add_argument("--ci", action="store_true", help="narrow models, few steps")
    p.add_argument("--synthetic", action="store_true", help="the project's synthetic data (784 features)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--settle0", action="store_true",
                   help="also print the findings with Thresholds(update_settle=0)")
    a = p.parse_args(argv)
    steps = a.steps or (5 if a.recipe == "sgd5" else CI_STEPS if a.ci else STEPS)
    batch = a.batch or (CI_BATCH if a.ci else BATCH)
    if a.synthetic:
        from gradscope.experiments.data import synthetic_dataset
        data: object = synthetic_dataset(features=784, n_train=2048, n_test=512, seed=a.seed)
    else:
        from gradscope.experiments.data import load_mnist
        data = load_mnist(quiet=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {steps} steps of "
          f"{batch} images{' (CI size)' if a.ci else ''}, seed {a.seed}")
    out = {}
    for name in a.models:
        recipe = SGD5 if a.recipe == "sgd5" else RECIPES[name]
        r = out[name] = train(name, data, steps=steps, batch=batch, recipe=recipe, ci=a.ci,
                              seed=a.seed, log=print)
        print(f"{name} ({recipe}): test accuracy {r.acc:.3f}, {len(r.findings)} findings, "
              f"{r.seconds:.0f}s")
        for f in r.findings:
            print(f"  {f.severity} {f.rule} {f.layer}: {f.message}")
        if a.settle0:
            early = analyze(r.history, Thresholds(update_settle=0))
            print(f"  with update_settle=0: {', '.join(f'{f.rule} {f.layer}' for f in early) or 'none'}")
        sys.stdout.flush()
    return out


if __name__ == "__main__":
    main()
