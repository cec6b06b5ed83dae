"""``LookaheadEstimator``: the machinery MetaQuant and FSG share.

One iteration (FSG_SPEC §4): a subclass proposes, per binary layer, an update direction built by its
hypernetworks from the previous step's gradient ``g``; the layer computes with the look-ahead weight
``W' = W - lr * direction`` (kept in the graph); backward then yields the meta-gradients and the new
``g``; the meta-optimizers step; ``W.grad`` is set to the (detached) base gradient and the base
optimizer steps. The first iteration has no ``g`` yet: a plain forward/backward and no update.

The look-ahead's *value* (``params.lookahead``):

* ``proposal``: ``W' = W - lr * direction``, FSG_SPEC §4's formula. The displacement is the raw learned
  gradient times lr; under Adam it is ~1e-4 of what the optimizer actually moves a weight.
* ``update``: MetaQuant's research code (csyhhu/MetaQuant, ``meta_quantized_module.py``, its "value
  trick"): ``W' = W - lr * (direction + (R - direction).detach())``, so the forward runs at
  ``W - lr * R`` with ``R`` the update the base optimizer applied at the previous step per unit lr (there
  ``weight.grad`` after ``get_refine_gradient``: Adam's ``m^/(sqrt(v^)+eps)``, SGD's momentum buffer),
  while the hypernetworks' gradient path stays ``-lr * direction``. Each binary layer's bias gets the
  value-only look-ahead ``b - lr * R_b`` as well. We measure ``R`` as ``(W_prev - W) / lr_prev``, which is
  the research code's refined gradient for every torch optimizer, weight decay included, without a
  hand-written optimizer. The first look-ahead (no previous update yet) uses the proposal's value; the
  research code uses the raw gradient there, one step of difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fsg_core.binary import BinaryLayer
from fsg_core.distributed import all_reduce_mean
from fsg_core.estimators.base import LearnedEstimator

__all__ = ["LookaheadEstimator"]


class LookaheadEstimator(LearnedEstimator):
    """Base of learned estimators that update weights through a look-ahead forward."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.layers: list[tuple[str, BinaryLayer]] = []
        self.sizes: list[int] = []
        self.meta_optimizers: list[torch.optim.Optimizer] = []
        self.steps = 0
        self.stats_every = 1
        self._pending: list[Tensor] | None = None
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        # ``lookahead = update``: the weights, biases and lr of the previous look-ahead step, from which
        # the next step measures the update the base optimizer applied in between.
        self._previous: dict[str, Any] | None = None

    # --- what a subclass provides -------------------------------------------------------------
    def build(self, device: torch.device) -> None:
        """Create the hypernetworks and ``self.meta_optimizers`` (``self.layers`` is set)."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether a previous gradient exists, i.e. whether this step can look ahead."""
        raise NotImplementedError

    def propose(self, calibration: Tensor, stats: bool = True) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Return (direction in the graph, detached base gradient, statistics), all flat (N,).

        ``stats``: whether this step's statistics are wanted (every ``stats_every`` steps; each is a
        reduction over every binary weight); otherwise return an empty dict.
        """
        raise NotImplementedError

    def observe(self, grads: Tensor, tildes: Tensor) -> None:
        """Record this step's averaged ``g`` and ``w~`` (flat, detached) for the next step."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- lifecycle called by the training loop --------------------------------------------------
    def setup(self, layers: Sequence[tuple[str, BinaryLayer]]) -> None:
        self.layers = list(layers)
        if not self.layers:
            raise ValueError(f"estimator {self.name!r} needs at least one binary layer; the model has none")
        self.sizes = [layer.weight.numel() for _, layer in self.layers]
        for _, layer in self.layers:
            layer.capture = True
        device = self.layers[0][1].weight.device
        self.stats_every = int(getattr(self.params, "stats_every", 1))
        self.value_from_update = getattr(self.params, "lookahead", "proposal") == "update"
        self._biased = [layer for _, layer in self.layers if getattr(layer, "bias", None) is not None]
        self._layer_index = torch.repeat_interleave(
            torch.arange(len(self.sizes), device=device),
            torch.tensor(self.sizes, device=device),
            output_size=sum(self.sizes),
        )  # (N,) the layer of every flat coordinate
        self.build(device)

    def meta_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.meta_modules() for p in module.parameters()]

    def _flat(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _split(self, flat: Tensor) -> list[Tensor]:
        return [
            part.view_as(layer.weight) for part, (_, layer) in zip(flat.split(self.sizes), self.layers, strict=True)
        ]

    def _calibration(self, weights: Tensor) -> Tensor:
        """``c = ∂x/∂W`` of every binary weight, flat (N,), from the flat weights.

        For dorefa, ``(1 - tanh² W) / max_l |tanh W|``: a handful of ops over all layers at once (one
        tanh, one segmented max) instead of the same ops per layer; the values are the per-layer ones.
        """
        kinds = {layer.binarizer.kind for _, layer in self.layers}
        if kinds == {"bwn"}:
            return torch.ones_like(weights)
        if kinds != {"dorefa"}:  # mixed binarizers: layer by layer
            return self._flat([layer.binarizer.calibration(layer.weight) for _, layer in self.layers])
        t = torch.tanh(weights)
        peak = t.abs().new_zeros(len(self.sizes)).scatter_reduce_(0, self._layer_index, t.abs(), "amax")
        return (1.0 - t * t) / peak.clamp_min(1e-12)[self._layer_index]

    def before_forward(self, lr: float) -> None:
        self._pending = None
        if not self.ready():
            return
        with torch.no_grad():
            weights = self._flat([layer.weight.detach() for _, layer in self.layers])  # (N,), one buffer
            c = self._calibration(weights)
        want_stats = self.steps % self.stats_every == 0
        direction, base, stats = self.propose(c, want_stats)
        shift = direction
        if self.value_from_update:
            shift = self._value_trick(weights, direction, lr, stats if want_stats else None)
        lookahead = weights - lr * shift  # (N,), in the graph of the hypernetworks
        for (_, layer), w in zip(self.layers, self._split(lookahead), strict=True):
            layer.lookahead = w
        self._pending = self._split(base)
        if want_stats:
            for key, value in stats.items():
                # Summed as tensors: a float() per step would synchronise the GPU every step.
                self._sums[key] = self._sums[key] + value.detach() if key in self._sums else value.detach()
            self._count += 1

    def _value_trick(self, weights: Tensor, direction: Tensor, lr: float, stats: dict[str, Tensor] | None) -> Tensor:
        """The shift whose value is the previous update ``R`` and whose gradient is ``direction``'s.

        Also sets each biased layer's ``lookahead_bias = b - lr * R_b`` and remembers this step's weights,
        biases and lr for the next one.
        """
        with torch.no_grad():
            biases = self._flat([_bias(layer) for layer in self._biased]) if self._biased else None
        prev = self._previous
        self._previous = {"weights": weights, "biases": biases, "lr": float(lr)}
        if prev is None or prev["lr"] <= 0.0:
            return direction  # no previous update yet (or it had lr 0): the proposal's value
        with torch.no_grad():
            update = (prev["weights"] - weights) / prev["lr"]  # R, per unit lr, (N,)
        if biases is not None and prev["biases"] is not None:
            bias_update = (prev["biases"] - biases) / prev["lr"]
            sizes = [_bias(layer).numel() for layer in self._biased]
            for layer, r in zip(self._biased, bias_update.split(sizes), strict=True):
                bias = _bias(layer)
                layer.lookahead_bias = bias - lr * r.view_as(bias)  # b stays in the graph
        if stats is not None:
            stats["previous_update_rms"] = update.pow(2).mean().sqrt()
        return direction + (update - direction).detach()

    def after_backward(self, group: Any = None) -> bool:
        grads = []
        for name, layer in self.layers:
            if layer.captured_grad is None:
                raise RuntimeError(f"binary layer {name!r} received no gradient; is it used in the forward?")
            grads.append(layer.captured_grad)
        all_reduce_mean(grads, group)
        stepped = self._pending is not None
        if self._pending is not None:
            all_reduce_mean([p.grad for p in self.meta_parameters()], group)
            for opt in self.meta_optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            for (_, layer), grad in zip(self.layers, self._pending, strict=True):
                layer.weight.grad = grad
        tildes = [layer.last_tilde for _, layer in self.layers]
        self.observe(self._flat(grads), self._flat([t for t in tildes if t is not None]))
        for _, layer in self.layers:
            layer.lookahead = None
            layer.lookahead_bias = None
            layer.captured_grad = None
        self._pending = None
        self.steps += 1
        return stepped

    def statistics(self) -> dict[str, float]:
        """Means over the steps since the last call (the loop calls it once per epoch)."""
        out = {k: float(v) / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return out

    # --- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "modules": [m.state_dict() for m in self.meta_modules()],
            "optimizers": [o.state_dict() for o in self.meta_optimizers],
            "extra": self.extra_state(),
            "previous": self._previous,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for module, s in zip(self.meta_modules(), state["modules"], strict=True):
            module.load_state_dict(s)
        for opt, s in zip(self.meta_optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        # Checkpoints load on the CPU; a run resumed on a GPU needs the history and carried tensors there.
        device = self.layers[0][1].weight.device
        self.load_extra_state(_to_device(state["extra"], device))
        self._previous = _to_device(state.get("previous"), device)  # absent in checkpoints before the value trick


def _bias(layer: BinaryLayer) -> Tensor:
    """The bias of a binary conv or linear layer that has one (the mixin does not declare it)."""
    bias: Tensor = getattr(layer, "bias")  # noqa: B009
    return bias


def _to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj
