"""Text helpers the renderers share: escaping for markdown, number formats, and the notes both
formats print the same way.

Every string from a user or a run that goes into markdown passes ``escape``: HTML specials become
entities (GitHub would otherwise render tags) and markdown specials, ``|`` and ``$`` (GitHub
math) are backslash-escaped. The HTML page escapes through jinja2's autoescape instead.
"""

from __future__ import annotations

import re

from vlbench import paper
from vlbench.contention import PEAK_INVALID, valid_share
from vlbench.results import FLOP_CONVENTION

#: what the report says about FLOPs: ours, and that the paper's are of unknown convention
FLOP_NOTE = f"{FLOP_CONVENTION} ({paper.CONVENTION_UNSTATED})"


def escape(text: object) -> str:
    """Plain text safe in a markdown table cell: no tags, no formatting, no math, no cell breaks."""
    value = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = re.sub(r"([\\`*_\[\]|$~])", r"\\\1", value)
    return " ".join(value.split())  # newlines would end the table row


def fence(text: str) -> str:
    """A fenced code block that no backtick run inside ``text`` can close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    return f"{marks}\n{text}\n{marks}"


def markdown_ms(value: float | None) -> str:
    """Milliseconds in a markdown cell: three significant figures at most."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def html_ms(value: float | None) -> str:
    """Milliseconds in an HTML table (the ``ms`` filter): one more digit than markdown's."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def number(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators (the ``num`` filter); '-' when absent."""
    return "-" if value is None else f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    """A share as a percentage (the ``pct`` filter); '-' when absent."""
    return "-" if value is None else f"{value:.1%}"


def peak_percent(value: float | None) -> str:
    """A share of the matmul peak (the ``share`` filter): '-' when absent, "peak invalid" above
    100% (never a figure), else a percentage."""
    if value is None:
        return "-"
    return percent(value) if valid_share(value) else PEAK_INVALID
