"""Benchmarks of madao_pl: policy speed, MADAO's time/memory cost, test error on digits.

Run them all with ``python -m benchmarks.run_all`` (``--quick``: the cost benchmark alone, its quick form);
each writes ``benchmarks/results/<name>.json`` and ``python -m benchmarks.report`` regenerates
``benchmarks/README.md``.
"""
