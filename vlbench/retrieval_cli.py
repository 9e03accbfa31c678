"""Moved: the run's retrieval summary is ``vlbench.retrieval_cost.retrieval_summary``; this name
stays until the CLI imports it from there."""

from .retrieval_cost import curve_rows, retrieval_summary  # noqa: F401
