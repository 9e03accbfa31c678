"""Parsers of the values a user types: one place per kind of value, used by the command line's
flags (as argparse ``type=``) and by suite files alike, so a value is checked once, where its
option is defined. Each raises ``BadValue`` (a ``ValueError``, which argparse reports as the
flag's own one-line error). Pure: no torch.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable

from .results import EXECUTION_MODES, PRECISIONS


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value that does not parse; the message says what was expected and what came."""


def _number(text: object, cast: type) -> int | float:
    if isinstance(text, bool):
        raise BadValue(f"expected a number, got {text!r}")
    try:
        value = cast(text)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        raise BadValue(f"expected {'an integer' if cast is int else 'a number'}, got {text!r}"
                       ) from None
    if cast is int and isinstance(text, float) and text != value:
        raise BadValue(f"expected an integer, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadValue(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: object) -> int:
    value = _number(text, int)
    if value <= 0:
        raise BadValue(f"must be a positive integer, got {text!r}")
    return int(value)


def non_negative_int(text: object) -> int:
    value = _number(text, int)
    if value < 0:
        raise BadValue(f"must be a non-negative integer, got {text!r}")
    return int(value)


def finite_float(text: object) -> float:
    return float(_number(text, float))


def positive_float(text: object) -> float:
    value = float(_number(text, float))
    if value <= 0:
        raise BadValue(f"must be a positive number, got {text!r}")
    return value


def non_negative_float(text: object) -> float:
    value = float(_number(text, float))
    if value < 0:
        raise BadValue(f"must be a non-negative number, got {text!r}")
    return value


def probability(text: object) -> float:
    """A level strictly between 0 and 1 (a significance level)."""
    value = float(_number(text, float))
    if not 0 < value < 1:
        raise BadValue(f"must be between 0 and 1, got {text!r}")
    return value


def text(value: object) -> str:
    """A name or a path: an empty one is an error, never "the default" (``--db ''`` reading
    the default store, ``--models ''`` running the full suite)."""
    out = str(value)
    if not out.strip():
        raise BadValue(f"expected a non-empty value, got {value!r}")
    if "\x00" in out:
        raise BadValue(f"a value cannot contain a NUL character, got {value!r}")
    return out


#: the devices ``--device`` names; whether one is usable here is decided where torch is loaded
DEVICE_HELP = "auto, cpu, cuda, cuda:N"


def device(value: object) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (the syntax only: no torch here)."""
    name = str(value).strip()
    index = name.removeprefix("cuda:")
    if name in ("auto", "cpu", "cuda") or (index != name and index.isdigit()):
        return name
    raise BadValue(f"unknown device {value!r}; valid: {DEVICE_HELP}")


def image_size(text: object) -> tuple[int, int]:
    """'384x640' -> (384, 640); '224' -> (224, 224)."""
    parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise BadValue(f"image size must look like HEIGHTxWIDTH (e.g. 384x640), got {text!r}")
    return values[0], values[1]


def int_list(text: object, what: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32): positive integers separated by commas."""
    try:
        values = tuple(int(p) for p in str(text).split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise BadValue(f"{what} must be positive integers separated by commas "
                       f"(e.g. 1,8,32), got {text!r}")
    return values


def names(text: object, what: str) -> list[str]:
    """'a,b' -> ['a', 'b']; an empty list is an error, not "all". A comma inside a model
    variant's brackets (``uniter-base[nms=class-agnostic,post_nms_top_n=100]``) is the name's."""
    out = [n.strip() for n in re.split(r",(?![^\[\]]*\])", str(text)) if n.strip()]
    if not out:
        raise BadValue(f"expected comma-separated {what}, got {text!r}")
    return out


def precisions(values: Iterable[object]) -> tuple[str, ...]:
    """Precisions, each one of ``vlbench.results.PRECISIONS`` (the one check of a precision's
    name: a suite's list and ``--precisions`` alike)."""
    out = tuple(str(v).strip() for v in values)
    for precision in out:
        if precision not in PRECISIONS:
            raise BadValue(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return out


def execution_modes(values: Iterable[object]) -> tuple[str, ...]:
    """Execution modes, each one of ``vlbench.results.EXECUTION_MODES``, no repeats."""
    modes = tuple(str(v).strip() for v in values)
    if not modes:
        raise BadValue("'modes' must name at least one mode")
    for mode in modes:
        if mode not in EXECUTION_MODES:
            raise BadValue(f"unknown mode {mode!r}; valid: {', '.join(EXECUTION_MODES)}")
    if len(set(modes)) != len(modes):
        raise BadValue(f"'modes' lists a mode twice: {', '.join(modes)}")
    return modes
