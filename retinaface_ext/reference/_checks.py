"""Argument checks the reference ops share with the kernels (csrc/common/*_checks.h), same messages."""
import operator


def check_unit_interval(op, name, value):
    """An IoU or score threshold must be in [0, 1]: NaN fails every comparison (a NaN match threshold
    makes every prior positive, a NaN NMS threshold suppresses nothing) and values outside select
    everything or nothing."""
    value = float(value)
    if not 0 <= value <= 1:
        raise RuntimeError(f"{op}(): {name} must be in [0, 1], got {value}")


def check_variances(op, variances):
    """The two box-coding variances: positive and finite (csrc/common/checks.h check_variances)."""
    if len(variances) != 2:
        raise RuntimeError(f"{op}(): variances must have 2 values, got {len(variances)}")
    if not all(0 < float(v) < float("inf") for v in variances):
        raise RuntimeError(f"{op}(): variances must be positive and finite, got "
                           f"({float(variances[0])}, {float(variances[1])})")


def check_neg_pos_ratio(op, value):
    """-> ``value`` as an int; raises unless it is a whole number >= 0 (2.5 would be truncated by one
    implementation and not by another, NaN would select nothing)."""
    try:
        whole = float(value).is_integer() and not isinstance(value, bool)
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise RuntimeError(f"{op}(): neg_pos_ratio must be a whole number >= 0, got {value!r}")
    if value < 0:
        raise RuntimeError(f"{op}(): neg_pos_ratio must be >= 0, got {int(value)}")
    return int(value)


def check_integer(op, name, value):
    """-> ``value`` as an int; TypeError unless it is an integer (a Python or numpy int, not a bool):
    int() would quietly turn a crop size of 112.7 into 112 and "112" into 112."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{op}(): {name} must be an integer, got {value!r}")
