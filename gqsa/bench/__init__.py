"""Benchmarks and GPU-less kernel tools, apart from the library (gqsa.kernels never imports them).

Entry points, each ``python -m gqsa.bench.NAME --help``: ``kernels`` (every method per layer
shape), ``decode`` (end-to-end greedy decoding), ``tune`` (launch-parameter sweeps), ``report``
(the tables of their JSON); ``aot`` and ``sass`` compile the kernels for an H100 without one.
The entry points parse their options before importing Triton, so ``--help`` and ``report`` work
on machines without it.
"""

from __future__ import annotations


def require_triton(prog: str) -> None:
    """Exit with a one-line message (no traceback) when Triton cannot be imported."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"{prog} needs Triton, which is not importable here ({e}); "
                         'install it with: pip install "gqsa[triton]"') from None
