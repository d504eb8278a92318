"""Files written whole or not at all (checkpoints, ONNX graphs, detections.json)."""
import contextlib
import os
import secrets

TEMPORARY_SUFFIX = ".tmp"


def temporary_prefix(path):
    """Where written_atomically's temporaries for ``path`` start: a hidden name beside it."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.")


@contextlib.contextmanager
def written_atomically(path, durable=False):
    """Yields a temporary path beside ``path``, renamed to ``path`` when the block succeeds.

    A crash, a Ctrl-C or an error while the block writes leaves the previous
    file (or none), never a truncated one. The temporary's name is unique per
    process and call, so two writers into one folder do not mix their files;
    it is removed when the block fails. ``durable``: the data and the rename
    are also flushed to disk (fsync) before returning, as a checkpoint must be.
    """
    path = os.fspath(path)
    temporary = f"{temporary_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    try:
        yield temporary
        if durable:
            _fsync(temporary, os.O_RDONLY)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):  # the block or the rename failed
            os.unlink(temporary)
    if durable and os.name == "posix":  # the rename itself (not possible on Windows)
        _fsync(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)


def _fsync(path, flags):
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
