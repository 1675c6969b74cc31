"""Optimizers as graph pieces: (params, grads, state, schedule) -> (params', state').

Each follows torch.optim's update exactly (the tests compare 50 steps). The learning
rate and the step (int64, 1 for the first step) are graph inputs, so a schedule or a
restart needs no new graph. `schedule(lr, step)` turns them into the scalars the update
reads (Adam's bias corrections); the epoch graph computes them for all its steps at
once, before its loop. `clip_norm` clips the global gradient norm first, as
torch.nn.utils.clip_grad_norm_ does.

    opt = Adam(lr=1e-3)
    sched = opt.schedule(b, lr, step)
    new_params, new_state = opt.update(b, params, grads, state, sched)
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

    def schedule(self, b: GraphBuilder, lr: Var, step: Var) -> dict[str, Var]:
        """Scalars of one step from lr and step; elementwise, so a vector of steps gives
        one value per step."""
        return {"lr": lr}

    def gradient_scale(self, sched: dict[str, Var]) -> Var | None:
        """A factor the gradients may arrive multiplied by (then `update(prescaled=True)`):
        plain SGD takes lr * g, which costs one multiplication on the small logits
        gradient instead of one per parameter element. None: no such factor."""
        return None

    def update(self, b: GraphBuilder, params: list[Var], grads: list[Var],
               state: list[dict[str, Var]], sched: dict[str, Var], prescaled: bool = False):
        """Returns (new params, new state), state as one {slot: Var} per parameter."""
        if self.clip_norm is not None:
            grads = clip_by_global_norm(b, grads, self.clip_norm)
        new_params, new_state = [], []
        shaped: dict[int, dict[str, Var]] = {}  # rank -> the schedule's scalars at it
        for p, g, s in zip(params, grads, state, strict=True):
            if prescaled:
                new_params.append(b.minus(p, g))
                new_state.append({})
                continue
            # Conv weights get their scalars shaped [1, 1, 1, 1] (see scalars_of_rank).
            rank = len(b.types.get(g.name, (None, []))[1] or [])
            rank = rank if rank >= 3 else 0
            if rank not in shaped:
                ones = b.ints([1] * rank)
                shaped[rank] = {k: b.Reshape(v, ones) for k, v in sched.items()} if rank \
                    else sched
            with b.scalars_of_rank(rank):
                p, g = self.decay(b, p, g, shaped[rank])
                delta, s2 = self.direction(b, g, s, shaped[rank])
            new_params.append(p - delta)
            new_state.append(s2)
        return new_params, new_state

    def decay(self, b, p, g, sched):
        """Weight decay, before the step: (p, g) -> (p', g'). By default L2 added to the
        gradient, as torch.optim does with `weight_decay`, when the optimizer has one."""
        weight_decay = getattr(self, "weight_decay", 0.0)
        return p, (g + weight_decay * p if weight_decay else g)

    def direction(self, b, g, s, sched):
        """(delta, new slots): the step is p' - delta. Elementwise in g and the slots."""
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

    def gradient_scale(self, sched):
        if self.weight_decay or self.clip_norm is not None:
            return None
        return sched["lr"]

    def direction(self, b, g, s, sched):
        return sched["lr"] * g, {}


@dataclass
class Momentum(Optimizer):
    """SGD with momentum (torch semantics: buf = mu * buf + g), optionally Nesterov."""

    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    slots: ClassVar[tuple[str, ...]] = ("momentum",)

    def direction(self, b, g, s, sched):
        buf = self.momentum * s["momentum"] + g
        direction = g + self.momentum * buf if self.nesterov else buf
        return sched["lr"] * direction, {"momentum": buf}


@dataclass
class Adam(Optimizer):
    """Adam with bias correction; weight_decay is L2 added to the gradient (torch.optim.Adam)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    slots: ClassVar[tuple[str, ...]] = ("m", "v")

    def schedule(self, b, lr, step):
        # lr / c1 * m / (sqrt(v) / sqrt(c2) + eps) = step_size * m / (sqrt(v) + eps_hat),
        # with the bias corrections c = 1 - beta^t folded into two scalars per step.
        t = b.as_float(step)
        root_c2 = b.Sqrt(1.0 - b.Pow(b.const(self.beta2), t))
        return {"step_size": lr * root_c2 / (1.0 - b.Pow(b.const(self.beta1), t)),
                "eps": root_c2 * self.eps}

    def direction(self, b, g, s, sched):
        m = self.beta1 * s["m"] + (1.0 - self.beta1) * g
        v = self.beta2 * s["v"] + (1.0 - self.beta2) * (g * g)
        denom = b.Sqrt(v) + sched["eps"]
        return sched["step_size"] * (m / denom), {"m": m, "v": v}


@dataclass
class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p *= 1 - lr * weight_decay."""

    weight_decay: float = 0.01

    def schedule(self, b, lr, step):
        sched = super().schedule(b, lr, step)
        if self.weight_decay:
            sched["keep"] = 1.0 - lr * self.weight_decay
        return sched

    def decay(self, b, p, g, sched):
        return (p * sched["keep"] if self.weight_decay else p), g


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "adamw": AdamW}
