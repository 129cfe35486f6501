"""Helpers shared by the benchmarks: starting and measuring service processes
(:mod:`.processes`), the small networks sent as cache misses (:mod:`.misses`).

A folder rather than a ``bench/*.py`` module, because ``make bench`` runs every ``bench/*.py``.
"""
