"""Checkpoints that survive a crash mid-write, and the RNG states that make a resume exact.

Checkpoints hold only tensors, numbers, strings and containers (the numpy RNG
state is stored as a tensor), so they are read with ``torch.load(weights_only=True)``:
a crafted file cannot run code when it is resumed or evaluated.
"""
import glob
import os
import pickle
import random

import numpy as np
import torch

from .._files import TEMPORARY_SUFFIX, temporary_prefix, written_atomically

def save_checkpoint(path, state):
    """``torch.save(state)`` to a temporary file in the same folder, then an atomic rename.

    A reader (or a crash, even kill -9) never sees a half-written ``path``: it
    holds either the previous checkpoint or the new one. The file gets the
    usual permissions (0666 minus the umask, like ``open``), not the 0600 of a
    temporary file, and temporaries left behind by a writer that was killed are
    removed after the next successful write.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with written_atomically(path, durable=True) as temporary, open(temporary, "wb") as stream:
        torch.save(state, stream)
    for stale in glob.glob(glob.escape(temporary_prefix(path)) + "*" + TEMPORARY_SUFFIX):
        try:
            os.unlink(stale)
        except OSError:
            pass


def load_checkpoint(path, map_location="cpu"):
    """A checkpoint written by :func:`save_checkpoint`, read with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` with the
    path for a file that is not a readable checkpoint (corrupt, truncated, or a
    pickle that needs more than tensors and containers: it is refused, never run).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is not a plain checkpoint: it needs objects that torch.load(weights_only=True) "
            "refuses to unpickle, since arbitrary code could run ("
            f"{str(error).splitlines()[0]}). Checkpoints of this trainer hold only tensors and "
            "containers; a file from an older version must be resumed with that version."
        ) from None
    except Exception as error:  # corrupt or truncated: zip, pickle or storage errors of any kind
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): "
                         f"{type(error).__name__}: {error}") from None


def rng_states():
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors, numbers and tuples."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state):
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
