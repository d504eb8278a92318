"""Loads the compiled ops (retinaface_ext._C) once, or notes that they are missing.

Without the extension every op in retinaface_ext.ops falls back to the
pure-PyTorch implementation in retinaface_ext.reference (same results, slower)
and a single warning says so. Set RETINAFACE_EXT_NO_EXTENSION=1 to force the
fallback, e.g. to compare the two paths.
"""
import os
import warnings

HAS_EXTENSION = False
EXTENSION_ERROR = None

if os.environ.get("RETINAFACE_EXT_NO_EXTENSION", "0") == "1":
    EXTENSION_ERROR = "disabled by RETINAFACE_EXT_NO_EXTENSION=1"
else:
    try:
        from . import _C  # noqa: F401  (importing registers torch.ops.retinaface.*)

        HAS_EXTENSION = True
    except ImportError as error:  # not built, or built against another torch
        EXTENSION_ERROR = str(error)

if not HAS_EXTENSION:
    warnings.warn(
        "retinaface_ext: the compiled extension is not available "
        f"({EXTENSION_ERROR}); using the pure-PyTorch reference ops, which are slower. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def register_fake(op_name):
    """torch.library.register_fake for retinaface::<op_name>, a no-op without the extension."""
    import torch

    def decorator(fn):
        if HAS_EXTENSION:
            torch.library.register_fake(f"retinaface::{op_name}")(fn)
        return fn

    return decorator


def fused_op(op_name):
    """torch.ops.retinaface.<op_name>, or None when the extension is missing."""
    import torch

    return getattr(torch.ops.retinaface, op_name) if HAS_EXTENSION else None


def ops_without_kernel(dispatch_key):
    """Names of the retinaface:: ops that have a CPU kernel but none for ``dispatch_key`` (e.g. "CUDA").

    Asks the dispatcher itself, so it checks the build that is loaded: with a
    CUDA build of the extension, ``ops_without_kernel("CUDA")`` must be empty.
    """
    import torch

    if not HAS_EXTENSION:
        raise RuntimeError(f"the compiled extension is not loaded: {EXTENSION_ERROR}")
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("retinaface::"))
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return [n for n in names if has(n, "CPU") and not has(n, dispatch_key)]


def check_same_device(op_name, reference_name, reference, **tensors):
    """For fake kernels: every tensor (None skipped) on the device of ``reference``, as the kernels check.

    A call mixing the meta device with real tensors dispatches to the fake
    kernel, which must raise like the real kernel rather than return empty memory.
    """
    import torch

    for name, tensor in tensors.items():
        if tensor is not None:
            torch._check(tensor.device == reference.device,
                         lambda: f"{op_name}(): {name} must be on the same device as {reference_name} "
                                 f"({reference.device}), got {tensor.device}")


def register_no_gradient(op_name, reason):
    """Registers the autograd of retinaface::<op_name>, whose outputs have no gradient: asking
    for one raises "<op_name>() has no gradient: <reason>". A no-op without the extension.

    Without a registration PyTorch would return outputs that require grad and
    silently give None gradients (or only warn at backward time).
    """
    import torch

    def backward(ctx, *grads):
        raise RuntimeError(f"{op_name}() has no gradient: {reason}")

    def setup_context(ctx, inputs, output):
        pass

    if HAS_EXTENSION:
        torch.library.register_autograd(f"retinaface::{op_name}", backward, setup_context=setup_context)


def check_first_order(op_name, *tensors):
    """Raises in a backward asked for a graph (create_graph=True) it cannot provide.

    Fused backward kernels have no derivative of their own; without this check a
    second-order gradient through them would silently come out as zero.
    """
    import torch

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{op_name}(): second-order gradients (create_graph=True through its backward) are not "
            "supported: the backward is a fused kernel. Use the pure-PyTorch "
            f"retinaface_ext.reference.{op_name} for higher-order derivatives.")
