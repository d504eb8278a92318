"""Where the shared test data lies: ``shared/data`` beside the repository (never copied into it)."""
import os
import pathlib

_REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def shared_data(name: str) -> str:
    """``shared/data/<name>`` beside the repository or beside one of its parent folders (worktrees and
    build copies such as build/cuda-src nest), or "" when there is none."""
    for parent in _REPOSITORY.parents:
        candidate = parent / "shared" / "data" / name
        if candidate.exists():
            return str(candidate)
    return ""


def crowd_jpg() -> str:
    """crowd.jpg (about 30 faces, 1024 x 624): $RETINAFACE_CROWD_JPG, else the shared copy, else ""."""
    return os.environ.get("RETINAFACE_CROWD_JPG") or shared_data("crowd.jpg")
