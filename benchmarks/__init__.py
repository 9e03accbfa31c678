"""Suite definitions (``suites/*.yaml``, shipped as package data) and full-size benchmark
scripts (``parity.py``). Nothing here is collected by the test run."""
