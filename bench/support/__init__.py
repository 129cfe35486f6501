"""Helpers shared by the service benchmarks (``bench/api_bench.py``, ``bench/search_bench.py``).

A folder rather than a ``bench/*.py`` module, because ``make bench`` runs every ``bench/*.py``.
"""
