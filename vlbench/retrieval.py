"""Retrieval cost: placeholder until the retrieval suite lands (issue 10)."""

from __future__ import annotations


def measure_retrieval_case(spec, options):  # noqa: ANN001, ANN201
    raise ValueError(f"task {spec.task!r} is not supported yet")
