"""Reports of stored runs: a self-contained HTML page (charts as inline SVG, no script, nothing
fetched) and a markdown summary for pull-request comments.

``write_report`` is what ``vlbench report`` calls; ``collect`` gathers the data both formats share.
"""

from vlbench.report.html import ReportData, collect, default_path, write_report
from vlbench.report.markdown import render_markdown

__all__ = ["ReportData", "collect", "default_path", "render_markdown", "write_report"]
