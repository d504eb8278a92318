"""Hypothesis runs the same examples on every run (CI must not be a lottery).

`python -m pytest tests --hypothesis-profile explore` draws new examples
instead, to look for cases the fixed ones miss.
"""
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("deterministic")
