"""Optimizers as graph pieces: (params, grads, state, lr, step) -> (params', state').

Each follows torch.optim's update exactly (the tests compare 50 steps). The learning
rate and the step (int64, 1 for the first step) are graph inputs, so a schedule or a
restart needs no new graph. `clip_norm` clips the global gradient norm first, as
torch.nn.utils.clip_grad_norm_ does.

    opt = Adam(lr=1e-3)
    new_params, new_state = opt.update(b, params, grads, state, lr, step)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from edgetune.autodiff import GraphBuilder, Var


@dataclass
class Optimizer:
    lr: float = 0.01
    clip_norm: float | None = None

    # Names of the per-parameter state slots, each shaped like its parameter.
    slots: ClassVar[tuple[str, ...]] = ()

    def config(self) -> dict:
        return {"name": type(self).__name__, **asdict(self)}

    def update(self, b: GraphBuilder, params: list[Var], grads: list[Var],
               state: list[dict[str, Var]], lr: Var, step: Var):
        """Returns (new params, new state), state as one {slot: Var} per parameter."""
        if self.clip_norm is not None:
            grads = clip_by_global_norm(b, grads, self.clip_norm)
        new_params, new_state = [], []
        for p, g, s in zip(params, grads, state, strict=True):
            p2, s2 = self.update_one(b, p, g, s, lr, step)
            new_params.append(p2)
            new_state.append(s2)
        return new_params, new_state

    def update_one(self, b, p, g, s, lr, step):
        raise NotImplementedError


def clip_by_global_norm(b: GraphBuilder, grads: list[Var], max_norm: float) -> list[Var]:
    squares = [b.sum_all(g * g) for g in grads]
    total = b.Sqrt(b.add_all(squares))
    scale = b.Min(max_norm / (total + 1e-6), b.const(1.0))
    return [g * scale for g in grads]


@dataclass
class SGD(Optimizer):
    """p -= lr * (g + weight_decay * p)"""

    weight_decay: float = 0.0

    def update_one(self, b, p, g, s, lr, step):
        if self.weight_decay:
            g = g + self.weight_decay * p
        return p - lr * g, {}


@dataclass
class Momentum(Optimizer):
    """SGD with momentum (torch semantics: buf = mu * buf + g), optionally Nesterov."""

    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    slots: ClassVar[tuple[str, ...]] = ("momentum",)

    def update_one(self, b, p, g, s, lr, step):
        if self.weight_decay:
            g = g + self.weight_decay * p
        buf = self.momentum * s["momentum"] + g
        direction = g + self.momentum * buf if self.nesterov else buf
        return p - lr * direction, {"momentum": buf}


@dataclass
class Adam(Optimizer):
    """Adam with bias correction; weight_decay is L2 added to the gradient (torch.optim.Adam)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def decay(self, b, p, g, lr):
        return p, (g + self.weight_decay * p if self.weight_decay else g)

    def update_one(self, b, p, g, s, lr, step):
        p, g = self.decay(b, p, g, lr)
        t = b.as_float(step)
        m = self.beta1 * s["m"] + (1.0 - self.beta1) * g
        v = self.beta2 * s["v"] + (1.0 - self.beta2) * (g * g)
        correction1 = 1.0 - b.Pow(b.const(self.beta1), t)
        correction2 = 1.0 - b.Pow(b.const(self.beta2), t)
        denom = b.Sqrt(v) / b.Sqrt(correction2) + self.eps
        return p - (lr / correction1) * (m / denom), {"m": m, "v": v}


@dataclass
class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p *= 1 - lr * weight_decay."""

    weight_decay: float = 0.01

    def decay(self, b, p, g, lr):
        return (p * (1.0 - lr * self.weight_decay) if self.weight_decay else p), g


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "adamw": AdamW}
