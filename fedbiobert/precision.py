"""Mixed precision (--precision): the one place that turns the option into autocast contexts, a
gradient scaler and the GPU's fp32 matmul mode.

- Master weights stay fp32 always (a model is never `.half()`ed): autocast runs the matmuls of a
  forward in bf16/fp16 and the optimizer steps the fp32 parameters. A checkpoint therefore means
  the same whatever the precision, which is why --precision is not in checkpoint.RESUME_MUST_MATCH.
- Only forwards run under autocast; every backward runs outside it (autograd replays each op in
  the dtype its forward used). An autocast context must never stay open across an optimizer step:
  autocast caches the casts of the weights until its outermost context exits, and a cache kept
  across a step would feed the old weights to the next forward.
- Losses are computed in fp32: mlm_loss (model/mlm.py) and the validation loss cast the logits to
  float before the cross-entropy (autocast on CUDA would run cross_entropy in fp32 anyway; on the
  CPU it does not, hence the explicit cast).
- fp16 needs a loss scaler (fp16's range is too small for small gradients); bf16 has fp32's range
  and needs none. `grad_scaler` gives one only for fp16; the trainers' Stepper owns it.
- The wire dtype (--comm_dtype) is independent: senders cast to it, receivers cast back to fp32.
"""
from __future__ import annotations

import contextlib

import torch

COMPUTE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _precision_name(config_or_precision) -> str:
    return getattr(config_or_precision, "precision", config_or_precision)


def compute_dtype(config_or_precision) -> torch.dtype | None:
    """The autocast dtype of a precision ('fp32', 'bf16', 'fp16' or a Config): None for fp32."""
    return COMPUTE_DTYPES[_precision_name(config_or_precision)]


def device_of(module_or_device) -> torch.device:
    """A device, a device name, or the device of a module's first parameter."""
    if isinstance(module_or_device, torch.nn.Module):
        return next(module_or_device.parameters()).device
    return torch.device(module_or_device)


def autocast(config_or_precision, device):
    """The context a forward runs in: torch.autocast in bf16/fp16 on `device` (a device or a
    module), a no-op for fp32."""
    dtype = compute_dtype(config_or_precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_of(device).type, dtype=dtype)


def grad_scaler(config_or_precision, device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 (one per optimizer), None for fp32 and bf16."""
    if _precision_name(config_or_precision) != "fp16":
        return None
    return torch.amp.GradScaler(device_of(device).type)


def configure_matmuls(config) -> None:
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (fp32 runs, and the ops
    autocast leaves in fp32 in bf16/fp16 runs): about 8x the fp32 throughput of an Ampere or later
    GPU for a 10-bit mantissa in the products, which pre-training does not notice. Nothing on CPU."""
    if config.on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
