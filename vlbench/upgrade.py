"""Old case records read as today's: what a field added later means for a record written before
it existed.

One function, ``upgrade_case``, serves both places old records come from: the store's migration
to version 3 (``vlbench.store_schema``) and the reader of exports (``vlbench.read_export``), so a
store and an export written by the same release read alike. It only adds what a record lacks,
never overwrites a stored value, and never consults today's presets:

- each stage's ``category``, from its ``kind`` by ``LEGACY_CATEGORIES``, frozen as it stood when
  categories began to be stored (a later change to ``StageKind.category`` must not rewrite old
  runs);
- ``paper_row`` / ``paper_bar``: the ViLT paper's Table 6 row and Figure 1 bar for the stored
  model name (``vlbench.paper``: published figures, which do not change);
- ``canonical_image_size`` / ``canonical_text_len``: None, "not recorded" (today's preset may not
  be the one that was measured);
- ``contention``: None, "not measured" (``vlbench.contention``): never "quiet", since nobody
  knows what the machine was doing then; the gate calls such a comparison inconclusive.

Pure: no torch, no model packages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from vlbench import paper
from vlbench.results import StageResult

#: The category of a stage kind, for records stored before the category was (store version 2,
#: exports without ``category``). An unknown kind (a third-party model's) is "other".
LEGACY_CATEGORIES: Mapping[str, str] = MappingProxyType({
    "backbone": paper.BACKBONE,
    "region_ops": paper.REGION_OPS,
    "patch": paper.VISUAL_EMBEDDING,
    "grid": paper.VISUAL_EMBEDDING,
    "precomputed": paper.VISUAL_EMBEDDING,
    "visual_embedding": paper.VISUAL_EMBEDDING,
    "region": paper.VISUAL_EMBEDDING,  # a region embedder's own time outside its parts
    "text": paper.TEXT_EMBEDDING,
    "single_modality": paper.SINGLE_MODALITY,
    "interaction": paper.INTERACTION,
    "head": paper.HEAD,
})
#: the category of work outside the paper's groups (retrieval's steps, unknown kinds)
OTHER = "other"
#: fields of a case record that carry no value in records written before they existed
_NOT_RECORDED = ("canonical_image_size", "canonical_text_len", "contention")


def legacy_category(kind: str) -> str:
    """The report category of a stage kind by the frozen map."""
    return LEGACY_CATEGORIES.get(kind, OTHER)


def stage_category(stage: StageResult) -> str:
    """The stage's stored category; for a record built by hand (""), the frozen map's."""
    return stage.category or legacy_category(stage.kind)


def paper_figures(model: str) -> dict[str, dict[str, Any] | None]:
    """The paper's Table 6 row and Figure 1 bar for a model name, as a case record stores them
    (``paper_row``, ``paper_bar``; None where the paper has none, as for tiny twins)."""
    row, bar = paper.table6_row(model), paper.figure1_bar(model)
    return {"paper_row": dataclasses.asdict(row) if row else None,
            "paper_bar": dataclasses.asdict(bar) if bar else None}


def upgrade_case(data: dict[str, Any]) -> dict[str, Any]:
    """A ``CaseResult.to_dict()`` record with the fields it lacks added (see the module
    docstring); the input is not modified. Fields present, whatever their value, are kept."""
    out = dict(data)
    out["stages"] = [
        stage if "category" in stage
        else {**stage, "category": legacy_category(str(stage.get("kind", "")))}
        for stage in data.get("stages", ())
    ]
    model = str(data.get("spec", {}).get("model", ""))
    for key, value in paper_figures(model).items():
        out.setdefault(key, value)
    for key in _NOT_RECORDED:
        out.setdefault(key, None)
    return out
