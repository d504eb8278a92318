"""``python -m retinaface_ext {demo,detect,export}``."""
import sys

from .cli import main

sys.exit(main())
