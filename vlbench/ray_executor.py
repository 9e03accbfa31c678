"""``vlbench run --executor ray``: placeholder until the Ray executor lands (issue 9)."""

from __future__ import annotations


def check_ray_available() -> None:
    raise ValueError("--executor ray is not available yet")


def run_on_ray(cases, options, on_result, before=None):  # noqa: ANN001, ANN201
    raise ValueError("--executor ray is not available yet")
