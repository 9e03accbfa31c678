"""``python -m benchmarks.parity``: the full-size comparison (``script.main``)."""

from .script import main

raise SystemExit(main())
