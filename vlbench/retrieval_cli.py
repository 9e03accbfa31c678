"""``vlbench run --suite retrieval``: placeholder until the retrieval suite lands (issue 10)."""

from __future__ import annotations

import argparse


def is_retrieval_suite(ref: str | None) -> bool:
    """Whether ``ref`` names the retrieval suite (not yet built: never)."""
    return False


def cmd_run_retrieval(args: argparse.Namespace) -> int:
    raise NotImplementedError("the retrieval suite is not built yet")


def retrieval_summary(results: list) -> str:
    return ""
