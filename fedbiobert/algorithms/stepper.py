"""`Stepper`: one AdamW optimizer of a trainer, with its clipping, learning rate and fp16 loss scale."""
from __future__ import annotations

import logging

import torch

from fedbiobert.optim import build_optimizer, set_learning_rate
from fedbiobert.precision import grad_scaler

logger = logging.getLogger(__name__)


class Stepper:
    """An AdamW optimizer over a module's parameters (less those of `skip`, a submodule another
    Stepper owns), clipped on its own and stepped at the learning rate of a global step index.

    With --precision fp16 it owns a dynamic loss scaler (precision.grad_scaler): every backward
    into its parameters goes through `backward`, which scales; a gradient that leaves the process
    goes through `unscaled`; `step` unscales before clipping. The scaler skips a step whose scaled
    gradients overflowed and halves its scale: that is routine (a few times at the start of a run)
    and is counted in `scaler_skips`, not in `skipped_steps` (the --on_nonfinite failure). A
    skipped step counts as a failure only when the loss itself was NaN/inf, or when the scale had
    already fallen to FP16_FAILURE_SCALE (then the gradients overflow unscaled: the run has diverged).
    """

    FP16_FAILURE_SCALE = 1.0

    def __init__(self, module: torch.nn.Module, schedule, weight_decay: float, max_grad_norm: float | None,
                 skip: torch.nn.Module | None = None, precision: str = "fp32"):
        skipped = {id(param) for param in skip.parameters()} if skip is not None else set()
        named = [(name, param) for name, param in module.named_parameters()
                 if param.requires_grad and id(param) not in skipped]
        self.parameters = [param for _, param in named]
        self.optimizer = build_optimizer(named, weight_decay)
        self.schedule = schedule
        self.max_grad_norm = max_grad_norm
        self.before_step: list = []  # callables(module) run with the (unscaled) gradients (tests, diagnostics)
        self.module = module
        self.skipped_steps = 0  # steps whose gradients were not finite (the --on_nonfinite failure)
        self.scaler = grad_scaler(precision, module)
        self.scaler_skips = 0  # fp16: steps the loss scaler skipped for an overflow of the scaled gradients
        self._nonfinite_loss = False  # fp16: a loss given to backward() since the last step was NaN/inf

    def backward(self, tensor: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        """tensor.backward(grad) (a loss when grad is None), scaled by the loss scaler if there is one;
        `grad` is cast to `tensor`'s dtype (an autocast forward's output may be bf16/fp16)."""
        if grad is not None:
            tensor.backward(self.scaled(grad.to(tensor.dtype)))
            return
        if self.scaler is not None:
            self._nonfinite_loss |= not bool(torch.isfinite(tensor.detach()))
        self.scaled(tensor).backward()

    def scaled(self, tensor: torch.Tensor) -> torch.Tensor:
        """A loss, or a gradient arriving for a backward into this Stepper's parameters, times the
        fp16 loss scale (unchanged without a scaler)."""
        return tensor if self.scaler is None else self.scaler.scale(tensor)

    def unscaled(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient computed by a `backward` of this Stepper (e.g. at the cut, for the peer), unscaled."""
        return grad if self.scaler is None else grad / self.scaler.get_scale()

    def step(self, global_step: int) -> bool:
        """Clip, then step at the schedule's rate; a non-finite gradient skips the step (so NaN or
        inf never reaches the weights) and returns False."""
        # fp16, once any gradient exists (the scaler has nothing to check, and refuses to step, without)
        scaled = self.scaler is not None and any(param.grad is not None for param in self.parameters)
        if scaled:
            self.scaler.unscale_(self.optimizer)
        for hook in self.before_step:
            hook(self.module)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm or float("inf"))
        finite = bool(torch.isfinite(norm))
        set_learning_rate(self.optimizer, self.schedule(global_step), self.schedule.body_factor(global_step))
        if scaled:
            self._scaled_step(finite)
        elif finite:
            self.optimizer.step()
        else:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def _scaled_step(self, finite: bool) -> None:
        """fp16: the scaler steps (or skips, on the inf it found when unscaling) and updates its scale."""
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not finite:
            failed = self._nonfinite_loss or scale <= self.FP16_FAILURE_SCALE
            self.skipped_steps += failed
            self.scaler_skips += not failed
            logger.debug("fp16 loss scaler skipped a step at scale %g (%s); scale now %g", scale,
                         "a failure" if failed else "an overflow", self.scaler.get_scale())
        self._nonfinite_loss = False

    # --- optimizer state kept across rounds (--keep_silo_optimizer, --keep_server_optimizer) ----------
    def optimizer_state(self) -> dict:
        """AdamW's moments and step counts, on the CPU (a silo's state waits there until its next round:
        one copy per silo, never on the GPU)."""
        return _to_cpu(self.optimizer.state_dict())

    def load_optimizer_state(self, state: dict) -> None:
        """Continue from `state` (load_state_dict moves it to the parameters' device); the learning
        rate is set from the schedule at every step, so the saved one does not matter."""
        self.optimizer.load_state_dict(state)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
