"""Label sharing: let 1000 class embeddings learn from a few images each.

DiT's label embedder is a plain table, one row per class (plus the null class of classifier-free
guidance, MSF_PAPER.md Eq. 7). With little data per class every row gets only a few dozen gradient
updates, and a class it has not learned samples like the unconditional model. When classes are
products of attributes (the shapes dataset: class = shape + 10 * palette + 100 * texture, docs/DATA.md)
the rows can share what they learn: the table is trained *as if* it were

    E[c] = A_shape[shape(c)] + A_palette[palette(c)] + A_texture[texture(c)] + R[c]

without ever holding that sum. Under plain gradient descent the factorised table's rows move by

    dE[c] = dR[c] + sum_{c' same shape} dE[c'] + sum_{c' same palette} dE[c'] + sum_{c' same texture} dE[c']

so a gradient hook that replaces the table's gradient by that sum trains the plain table exactly as
the factorised one would be trained by SGD (with Adam, up to its per-coordinate step normalisation).
The weights stay a standard ``(num_classes + 1, D)`` table: checkpoints, EMA, export, the runtime and
a diffusers folder see plain DiT, nothing to bake. The null-class row is never shared.
"""
from __future__ import annotations

import math

import torch

from msf_train.errors import MsfError

# How class ids factor into attributes, outermost first: class = a0 * (f1 * f2) + a1 * f2 + a2.
# For the shapes dataset: texture (10) x palette (10) x shape (10).
SHAPES_FACTORS = (10, 10, 10)
SHARING = {"none": None, "shapes": SHAPES_FACTORS}


def shared_gradient(grad: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """(num_classes + 1, D) table gradient -> the same plus, per class row, the summed gradients of
    every class that has the same value of each attribute. The last row (null class) is unchanged."""
    n = math.prod(factors)
    if grad.shape[0] != n + 1:
        raise MsfError(f"label sharing over {'x'.join(map(str, factors))} = {n} classes needs a table of "
                       f"{n + 1} rows (with the null class), got {grad.shape[0]}")
    g = grad[:n].view(*factors, grad.shape[1])  # (f0, f1, f2, D)
    out = g.clone()
    axes = tuple(range(len(factors)))
    for keep in axes:  # one attribute kept, all others summed over: that attribute's shared gradient
        out += g.sum(dim=tuple(a for a in axes if a != keep), keepdim=True)
    return torch.cat([out.view(n, -1), grad[n:]], dim=0)  # (num_classes + 1, D)


def share_label_gradients(table: torch.nn.Parameter, mode: str) -> None:
    """Install the sharing hook on a label table (``model.y_embedder.weight``); ``mode`` is a key of SHARING."""
    if mode not in SHARING:
        raise MsfError(f"--label-sharing {mode!r}: use one of {', '.join(SHARING)}")
    factors = SHARING[mode]
    if factors is None:
        return
    n = math.prod(factors)
    if table.shape[0] != n + 1:
        raise MsfError(f"--label-sharing {mode} needs a model with {n} classes; this one has {table.shape[0] - 1}: "
                       f"use --label-sharing none")
    table.register_hook(lambda g: shared_gradient(g, factors))
