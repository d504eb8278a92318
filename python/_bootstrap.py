"""Lets the scripts in python/ run from a source checkout without installing the package."""
import os
import sys

try:
    import retinaface_ext  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
