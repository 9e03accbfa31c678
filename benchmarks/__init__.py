"""Suite definitions (``suites/*.yaml``, shipped as package data) and full-size benchmark
scripts (the ``parity`` package). Nothing here is collected by the test run."""
