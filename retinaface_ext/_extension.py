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
