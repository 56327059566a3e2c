"""GPU timing helpers shared by the benchmarks: rotated weight sets, CUDA-graph replays.

A decode layer's weight is read once per token, never from a warm L2, so each
timed callable gets its own copy of the weights, and the copies together exceed
the L2 several times over (50 MB on an H100). The calls are captured back to back
in one CUDA graph, as a decoder runs its layers, which also removes the Python
launch cost; the graph is replayed many times and the median per call reported.
Where capture fails (some library kernels refuse it), eager calls are timed with
events around the whole loop and the result is flagged ``graph=False``.
"""

from __future__ import annotations

import statistics
from typing import Callable

import torch

L2_FLUSH_BYTES = 3 * 50 * 2**20  # rotate through at least 3x the H100's L2


def copies_for(nbytes: int, max_copies: int = 64) -> int:
    """How many weight copies make a rotation of at least L2_FLUSH_BYTES (2 at least)."""
    return max(2, min(max_copies, -(-L2_FLUSH_BYTES // max(1, nbytes))))


def event_times(fn: Callable[[], object], reps: int) -> list[float]:
    """Microseconds of each of ``reps`` calls of ``fn``, timed with CUDA events."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return times


def capture_graph(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """One call of ``fn`` captured as a CUDA graph: ``fn`` runs once on a side stream first
    (compilation, allocator warm-up), then is captured there. The warm-up call's effects stay."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph


def time_rotating(fns: list[Callable[[], object]], target_us: float = 2000.0, reps: int = 15) -> tuple[float, bool]:
    """Median microseconds per call of ``fns`` (one callable per weight copy), and whether a graph ran."""
    for f in fns:  # compile, autotune, allocate outside the capture
        f()
    torch.cuda.synchronize()
    est = min(event_times(lambda: [f() for f in fns], 3)) / len(fns)
    rounds = max(1, int(target_us / max(est, 1.0) / len(fns)))
    calls = rounds * len(fns)

    def loop():
        for _ in range(rounds):
            for f in fns:
                f()
    try:
        graph = capture_graph(loop)
        graph.replay()
        torch.cuda.synchronize()
        return statistics.median(event_times(graph.replay, reps)) / calls, True
    except RuntimeError:
        torch.cuda.synchronize()
        return statistics.median(event_times(loop, reps)) / calls, False


def copy_bandwidth(nbytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = statistics.median(event_times(lambda: dst.copy_(src), 20)) * 1e-6
    return 2 * nbytes / t
