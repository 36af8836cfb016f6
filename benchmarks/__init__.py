"""fastconv benchmarks: pytest-benchmark suites (``test_*.py``) and the report
command ``python -m benchmarks.report``.  See ``benchmarks/README.md``."""
