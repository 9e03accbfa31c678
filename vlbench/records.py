"""Reading a case record back, from the store or from an export: checked against the record's own
field types before anything uses it.

A store row can be damaged (a disk error, a hand edit) and an export is a file anyone can write;
the gate must not turn a NaN median into "same" or a string into a traceback. ``read_case`` checks
a ``CaseResult.to_dict()`` record field by field against the dataclasses' type hints (so a new
field is checked the day it is added) and the numbers the statistics trust (medians, samples, the
stage sum) for being finite and non-negative; anything else is a ``DamagedRecord`` naming the
field. The callers name the run and case (``vlbench.store``, ``vlbench.read_export``). Pure.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
import warnings
from typing import Any

from .case_keys import spec_from_key
from .results import CaseResult


class VlbenchWarning(UserWarning):
    """A warning for the user (the command line prints it as one line)."""


class DamagedRecord(ValueError):
    """A stored or exported case record that does not read as one; the message names the field."""


#: the numbers the statistics and the gate compute with: finite and non-negative
TRUSTED = frozenset({"median_ms", "samples_ms", "end_to_end_samples_ms", "stage_sum_ms"})


def read_case(data: object) -> CaseResult:
    """``CaseResult.from_dict(data)`` once ``data`` has been checked (``DamagedRecord``)."""
    _check_dataclass(CaseResult, data, "")
    assert isinstance(data, dict)
    e2e = data.get("end_to_end")
    if data["status"] == "ok" and e2e is not None and not e2e["median_ms"] > 0:
        raise DamagedRecord(f"end_to_end.median_ms: a measured case takes time, got "
                            f"{e2e['median_ms']!r}")
    try:
        return CaseResult.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:  # e.g. an unknown status
        raise DamagedRecord(str(exc)) from None


def stored_case(run_id: int, key: str, payload: object, where: object) -> CaseResult:
    """A store row's case. A damaged one (not JSON, or not a case record) does not block the
    run's other cases: it reads as an ``error`` case, with a warning naming the run and the case,
    and a resume measures it again (``Store.completed_case_keys`` skips only readable rows)."""
    try:
        return read_case(json.loads(payload))  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as exc:  # JSONDecodeError: a ValueError
        reason = " ".join(str(exc).split()) or type(exc).__name__
    try:
        spec = spec_from_key(key)
    except ValueError:
        raise DamagedRecord(f"run {run_id} in {where}: a damaged case record ({reason}) whose "
                            f"key {key!r} names no case") from None
    warnings.warn(f"run {run_id} case {key}: damaged record in {where} ({reason}); read as an "
                  f"error case, 'vlbench run --resume {run_id}' measures it again",
                  VlbenchWarning, stacklevel=3)
    return CaseResult(spec=spec, status="error", message=f"damaged record in the store: {reason}")


def readable(payload: object) -> bool:
    """Whether a store row's payload reads as a case (see ``stored_case``)."""
    try:
        read_case(json.loads(payload))  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def stored_json(run_id: int, what: str, payload: object, where: object) -> dict[str, Any]:
    """A run's recorded environment or settings; a damaged one reads as empty, with a warning
    naming the run (its cases stay readable)."""
    if not payload:
        return {}
    try:
        data = json.loads(payload)  # type: ignore[arg-type]
        if isinstance(data, dict):
            return data
        reason = f"a JSON {type(data).__name__}, not an object"
    except (TypeError, ValueError, RecursionError) as exc:
        reason = " ".join(str(exc).split())
    warnings.warn(f"run {run_id}: damaged {what} in {where} ({reason}); read as empty",
                  VlbenchWarning, stacklevel=3)
    return {}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_dataclass(cls: type, value: object, path: str) -> None:
    if not isinstance(value, dict):
        raise DamagedRecord(f"{path or 'record'}: expected an object, got {_short(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise DamagedRecord(f"{path or 'record'}: unknown field(s) {', '.join(unknown)}")
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DamagedRecord(f"{where}: missing")
            continue
        _check(_hints(cls)[name], value[name], where, name)


def _check(hint: Any, value: object, path: str, name: str) -> None:
    """``value`` against the type ``hint`` (the subset of types records use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if dataclasses.is_dataclass(hint):
        _check_dataclass(hint, value, path)  # type: ignore[arg-type]
    elif origin is tuple:
        _check_items(args, value, path, name)
    elif origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise DamagedRecord(f"{path}: expected an object, got {_short(value)}")
        for key, item in value.items():
            _check(args[1], item, f"{path}.{key}", name)
    elif not _scalar_ok(hint, value, name):
        raise DamagedRecord(f"{path}: expected {_describe(hint, name)}, got {_short(value)}")


def _check_items(args: tuple, value: object, path: str, name: str) -> None:
    if not isinstance(value, list | tuple):
        raise DamagedRecord(f"{path}: expected a list, got {_short(value)}")
    if args[-1] is not Ellipsis and len(value) != len(args):
        raise DamagedRecord(f"{path}: expected {len(args)} values, got {_short(value)}")
    for index, item in enumerate(value):
        _check(args[0] if args[-1] is Ellipsis else args[index], item, f"{path}[{index}]", name)


def _scalar_ok(hint: Any, value: object, name: str) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and name in TRUSTED:
            return math.isfinite(value) and value >= 0  # type: ignore[arg-type]
        return number
    if hint is str:
        return isinstance(value, str)
    return True  # a type records do not use: left to from_dict


def _describe(hint: Any, name: str) -> str:
    if hint is float and name in TRUSTED:
        return "a finite non-negative number"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))
