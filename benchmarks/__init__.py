"""Runnable benchmark scripts: ``python -m benchmarks.restart|edit|dispatch [options]``.

The measuring code is installed with the package, in :mod:`pivot_supervise.bench`, so
that ``pivot-supervise bench ...`` works from any install; these modules are thin
entry points with the same options, kept next to the recorded results in ``results/``.
"""
