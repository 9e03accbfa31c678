"""Reports of stored runs: a self-contained HTML page (charts as inline SVG, no script, nothing
fetched) and a markdown summary for pull-request comments.

``write_report`` is what ``vlbench report`` calls; ``collect`` gathers the data both formats share
(``data.py``); ``html.py`` and ``markdown.py`` render it; optional sections (retrieval cost) are
registered in ``registry.py``. Nothing here imports torch or the model packages: a report shows
what was stored with the run.
"""

from vlbench.report.data import ReportData, collect
from vlbench.report.markdown import render_markdown
from vlbench.report.write import default_path, render_report, write_report

__all__ = ["ReportData", "collect", "default_path", "render_markdown", "render_report",
           "write_report"]
