"""``python -m retinaface_ext {demo,detect,export,train,evaluate}``."""
import sys

from .cli import main

sys.exit(main())
