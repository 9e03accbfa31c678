"""Variants of a preset, named by a suffix: ``uniter-base[nms=class-agnostic,post_nms_top_n=100]``
is ``uniter-base`` with those fields of its visual embedder's config replaced.

Why a name and not registered variant presets: a name goes wherever a model name goes (suite
files, ``--models``, stored case keys, reports, ``vlbench compare``) and rebuilds the model from
itself alone, so a stored run is read, compared and resumed with no registry of variants, and
any field of any preset (a pair, a plugin's) can be varied without code. ``resolve_preset``
applies the rules, which live here only:

- only fields of the preset's visual embedder config, of type str, int, float or bool; a value
  is read as the type of the preset's own value (``true``/``false`` for a bool);
- the variant is checked by building its embedder on the meta device (no memory, no weights), so
  a value the embedder refuses (``nms=foo``, more boxes than proposals) is a one-line error at
  once, not a failed case;
- the canonical spelling, which is the resulting preset's name and so the case key: fields in
  alphabetical order, values as read back (``16`` for a float is ``16.0``), overrides equal to
  the preset's own value dropped (``uniter-base[nms=per-class]`` is ``uniter-base``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from feature_extractors import UnknownNameError, build_embedder

from .preset import Preset

_VARIANT = re.compile(r"(?P<base>[^\[\]]+)\[(?P<body>[^\[\]]*)\]")
_KEY = re.compile(r"[A-Za-z_]\w*")
_VALUE = re.compile(r"[\w.+-]+")
_TYPES = (bool, int, float, str)  # bool first: a bool is an int too


def is_variant(name: str) -> bool:
    """Whether ``name`` carries a ``[field=value,...]`` suffix (or a malformed one)."""
    return "[" in name or "]" in name


def split_variant(name: str) -> tuple[str, dict[str, str]]:
    """``"base[a=1,b=x]"`` -> ``("base", {"a": "1", "b": "x"})``; no suffix: no overrides."""
    if not is_variant(name):
        return name, {}
    match = _VARIANT.fullmatch(name)
    if match is None:
        raise ValueError(f"malformed model variant {name!r}: expected NAME[field=value,...]")
    overrides: dict[str, str] = {}
    for item in match["body"].split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ValueError(f"malformed override {item.strip()!r} in model {name!r}: expected "
                             "field=value (letters, digits, '_', '.', '+', '-')")
        if key in overrides:
            raise ValueError(f"model {name!r} sets {key!r} twice")
        overrides[key] = value
    return match["base"], overrides


def apply_variant(preset: Preset, overrides: dict[str, str]) -> Preset:
    """``preset`` with ``overrides`` applied to its visual config, named canonically."""
    config = preset.visual
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"model {preset.name!r}: its visual config is not a dataclass, so it "
                         "has no fields to vary")
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in fields:
            settable = ", ".join(k for k, v in fields.items() if type(v) in _TYPES)
            raise UnknownNameError(f"model {preset.name!r}: {type(config).__name__} has no field "
                                   f"{key!r}; valid: {settable}")
        value = _read(key, text, fields[key], preset.name)
        if value != fields[key]:
            changes[key] = value
    if not changes:
        return preset
    varied = dataclasses.replace(config, **changes)
    body = ",".join(f"{k}={_spell(changes[k])}" for k in sorted(changes))
    name = f"{preset.name}[{body}]"
    _check_builds(varied, name)
    return dataclasses.replace(preset, name=name, visual=varied,
                               description=f"{preset.description} -- variant: {body}")


def _read(key: str, text: str, current: Any, model: str) -> Any:
    """``text`` as the type of the field's current value."""
    kind = type(current)
    if kind not in _TYPES:
        raise ValueError(f"model {model!r}: field {key!r} ({kind.__name__}) cannot be set in a "
                         "name; only str, int, float and bool fields can")
    if kind is str:
        return text
    try:
        if kind is bool:
            return {"true": True, "false": False}[text]
        return kind(text)
    except (KeyError, ValueError):
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise ValueError(f"model {model!r}: {key}={text} is not {expected}") from None


def _spell(value: Any) -> str:
    """A value as the canonical name writes it (and reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


#: canonical names whose embedder has been built once on the meta device in this process
_CHECKED: set[str] = set()


def _check_builds(config: Any, name: str) -> None:
    """Build the embedder on the meta device: its own checks name a bad value in one line.
    Once per name and process (a full-size detector takes ~0.4 s to construct)."""
    if name in _CHECKED:
        return
    try:
        with torch.device("meta"):
            build_embedder(config)
    except (ValueError, KeyError, TypeError) as exc:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(f"model {name!r}: {message.splitlines()[0]}") from None
    _CHECKED.add(name)
