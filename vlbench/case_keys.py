"""The identity of a case: the key that tells, within a run, which cases are already done (a
resume), and the key that matches a case across runs, rounds and the sides of an A/B run."""

from __future__ import annotations

import dataclasses
import re

from vlbench.results import EXECUTION_MODES, REGION_BACKENDS, CaseSpec


def case_key(spec: CaseSpec) -> str:
    """A stable identity for a case within a run, so a resume can tell what is already done.
    The execution mode, a per-case thread count, a re-ranking's k and a region backend other than
    vlbench's join the key only when they are not the defaults, so the keys of eager runs stay
    what they were."""
    height, width = spec.image_size
    key = (
        f"{spec.model}|{spec.batch_size}|{height}x{width}|{spec.text_len}"
        f"|{spec.precision}|{spec.device}"
    )
    if getattr(spec, "mode", "eager") != "eager":
        key += f"|{spec.mode}"
    if getattr(spec, "threads", None) is not None:
        key += f"|t{spec.threads}"
    if getattr(spec, "task", None):
        key += f"|{spec.task}"
    if getattr(spec, "rerank_k", None) is not None:
        key += f"|k{spec.rerank_k}"
    if getattr(spec, "region_backend", None):
        key += f"|{spec.region_backend}"
    if getattr(spec, "side", None):
        key += f"|side{spec.side}"
    if getattr(spec, "round", 0):
        key += f"|r{spec.round}"
    return key


def identity_key(spec: CaseSpec) -> str:
    """What a case measures, whatever its round or side: the key that matches a case across
    runs, rounds and the two sides of an interleaved run."""
    return case_key(dataclasses.replace(spec, round=0, side=None))


def spec_from_key(key: str) -> CaseSpec:
    """The case a ``case_key`` names (what a damaged record of it is read as); ValueError for a
    string that is not one."""
    try:
        model, batch, size, text_len, precision, device, *rest = key.split("|")
        height, width = size.split("x")
        fields: dict = dict(model=model, batch_size=int(batch), image_size=(int(height),
                            int(width)), text_len=int(text_len), precision=precision,
                            device=device)
    except ValueError:
        raise ValueError(f"{key!r} is not a case key") from None
    for part in rest:
        if part in EXECUTION_MODES:
            fields["mode"] = part
        elif re.fullmatch(r"t\d+", part):
            fields["threads"] = int(part[1:])
        elif re.fullmatch(r"r\d+", part):
            fields["round"] = int(part[1:])
        elif re.fullmatch(r"k\d+", part):
            fields["rerank_k"] = int(part[1:])
        elif part in REGION_BACKENDS:
            fields["region_backend"] = part
        elif part.startswith("side"):
            fields["side"] = part[4:]
        else:
            fields["task"] = part
    spec = CaseSpec(**fields)
    if case_key(spec) != key:
        raise ValueError(f"{key!r} is not a case key")
    return spec
