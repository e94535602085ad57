"""Budgets in measured time: a compact latency model of an architecture on one device, and the slice it picks.

:mod:`.model` is the record (per-block time as a function of MLP width and heads, plus the fixed parts),
:mod:`.profile` measures it, :mod:`.cache` keeps it in the user's cache directory keyed by everything that changes
the timings (device, threads, dtype, batch, resolution, torch version, architecture), and :mod:`.chooser` turns a
``speedup`` or ``latency`` budget into per-block widths under the rules of FLOPs budgets (docs/latency.md).
"""
