"""Argument checks shared by the recognition losses.

Errors name the function, the argument, what was expected and what was got,
like the ops' TORCH_CHECKs: ``center_loss(): features must have shape [N, D], got [3]``.
Shapes and dtypes raise ValueError / TypeError (these are Python functions, not ops).
"""
import torch


def shape_str(tensor):
    return str(list(tensor.shape))


def check_tensor(fn, name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")


def check_floating(fn, name, tensor):
    check_tensor(fn, name, tensor)
    if not tensor.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {tensor.dtype}")


def check_labels(fn, name, labels, num_rows):
    """labels: a 1-D integer tensor with one entry per row of the other input."""
    check_tensor(fn, name, labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != num_rows:
        raise ValueError(f"{fn}: {name} must have shape [{num_rows}] (one per row), got {shape_str(labels)}")


def check_same_device(fn, **tensors):
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        described = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{fn}: all inputs must be on one device, got {described}")


def check_choice(fn, name, value, choices):
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def compute_dtype(*tensors):
    """float64 when any input is float64, else float32 (float16/bfloat16 are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
