"""The README's first picture: the gradient-flow image of a sigmoid net beside a ReLU one.

Trains two MLPs of the same shape on the same synthetic batches under
``gradscope.watch`` (offline, about a minute on 2 CPU cores) and puts the two
``gradscope/gradient_flow`` images that TensorBoard shows side by side, one titled
per net:

    PYTHONPATH=. python scripts/gradient_flow_pair.py            # -> docs/gradient_flow_sigmoid_relu.png
    PYTHONPATH=. python scripts/gradient_flow_pair.py --out /tmp/pair.png --steps 50
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradscope
from gradscope.history import History
from gradscope.writers.figures import gradient_flow_image

# ---- settings ---------------------------------------------------------------
DEPTH, WIDTH, D_IN, CLASSES = 6, 64, 64, 10
BATCH, LR, STEPS, SEED = 64, 0.1, 200, 0
NETS = {  # title -> (activation, init of every Linear)
    "sigmoid, Xavier init": (nn.Sigmoid, nn.init.xavier_normal_),
    "ReLU, He init": (nn.ReLU, lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")),
}
OUT = "docs/gradient_flow_sigmoid_relu.png"
HEADER_PX, DPI = 36, 80
# ------------------------------------------------------------------------------


def train(act: type[nn.Module], init: Callable[[torch.Tensor], object], steps: int) -> History:
    """One MLP trained under the monitor on a fixed random teacher's labels."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    teacher = torch.randn(D_IN, CLASSES, generator=gen)
    layers: list[nn.Module] = []
    d = D_IN
    for i in range(DEPTH + 1):
        lin = nn.Linear(d, CLASSES if i == DEPTH else WIDTH)
        init(lin.weight)
        nn.init.zeros_(lin.bias)
        layers += [lin] if i == DEPTH else [lin, act()]
        d = WIDTH
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with gradscope.watch(model, optimizer=opt, summary=False) as mon:
        for _ in range(steps):
            x = torch.randn(BATCH, D_IN, generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), (x @ teacher).argmax(1)).backward()
            opt.step()
    return mon.history


def side_by_side(images: dict[str, np.ndarray], out: Path) -> None:
    """The images at full size in one row, each under its title."""
    from matplotlib.figure import Figure

    h = max(im.shape[0] for im in images.values())
    w = sum(im.shape[1] for im in images.values())
    fig = Figure(figsize=(w / DPI, (h + HEADER_PX) / DPI), dpi=DPI)
    x = 0
    for title, im in images.items():
        ax = fig.add_axes((x / w, 0, im.shape[1] / w, im.shape[0] / (h + HEADER_PX)))
        ax.imshow(im, interpolation="none")
        ax.set_axis_off()
        fig.text((x + im.shape[1] / 2) / w, 1 - HEADER_PX / 2 / (h + HEADER_PX), title,
                 ha="center", va="center", fontsize=15, weight="bold")
        x += im.shape[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=OUT, help=f"the PNG to write (default: {OUT})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"SGD steps per net (default: {STEPS})")
    args = p.parse_args()
    images = {}
    for title, (act, init) in NETS.items():
        image = gradient_flow_image(train(act, init, args.steps))
        assert image is not None, "nothing recorded"
        images[title] = image
    side_by_side(images, Path(args.out))
    print(args.out)


if __name__ == "__main__":
    main()
