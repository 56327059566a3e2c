"""Gather the JSON logs of several runs into a Markdown table and PNG plots.

The run log
-----------
Each run writes one ``run.json`` into its own folder (``RUN_DIR/run.json``; a path to a
``.json`` file is read as is). ``gqsa compress`` writes the same schema as ``gqsa_log.json``
into the folder it makes (read when a folder has no ``run.json``; its ``ppl`` is empty until
an evaluation fills it), and ``gqsa eval --json FILE`` writes it with the perplexities and
accuracies. Schema ``gqsa-run/1``:

==================  ========  ===================================================================
key                 required  meaning
==================  ========  ===================================================================
``schema``          no        ``"gqsa-run/1"``
``run``             no        short name (default: the folder's name)
``label``           no        what the table and plots show (default: ``run``)
``method``          yes       ``fp16``, ``gqsa``, ``rtn``, ``gptq``, ``sparsegpt``, ``wanda``, ...
``settings``        no        the method's config (bits, group_size, sparsity, pattern, ...)
``bits_per_weight`` yes       effective bits per weight of the compressed linears
                              (accounting of :mod:`gqsa.size`; 16 for fp16)
``bits_per_weight_all_linears``  no  the same over every linear of the decoder blocks,
                              skipped (dense) ones at 16 bits: the x axis of the plot when
                              every run has it
``model_bytes``     no        whole-model bytes (embeddings, norms, head and skipped layers
                              included; :mod:`gqsa.size`)
``ppl``             yes       ``{text name: perplexity}`` (may be empty)
``accuracy``        no        ``{task: accuracy}`` or ``{task: {"acc": .., "acc_norm": .., "n": ..}}``
``decode``          no        ``{"tokens_per_s": float, "device": str, ...}``: a decode benchmark
``model``, ``device``, ``date``, ``command``, ``seconds``, ``notes``: free-form provenance
==================  ========  ===================================================================

The report
----------
:func:`make_report` writes ``report.md`` (the table) into the output folder, with
``ppl_vs_bits.png`` (perplexity against effective bits per weight, one panel per text, log
scales) and, when at least one run has a decode benchmark, ``ppl_vs_speed.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA = "gqsa-run/1"
REQUIRED = ("method", "bits_per_weight", "ppl")
RUN_FILE = "run.json"
COMPRESS_LOG = "gqsa_log.json"


def load_run(path: Path) -> dict[str, Any]:
    """The run log at ``path`` (a run folder or a .json file), checked for the required keys."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / RUN_FILE
    if not file.is_file() and (path / COMPRESS_LOG).is_file():
        file = path / COMPRESS_LOG
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: a run folder must hold {RUN_FILE} or {COMPRESS_LOG}")
    run = json.loads(file.read_text())
    missing = [k for k in REQUIRED if k not in run]
    if missing:
        raise ValueError(f"{file}: run log lacks {missing} (schema {SCHEMA}, see gqsa.app.run_report)")
    if run.get("schema", SCHEMA) != SCHEMA:
        raise ValueError(f"{file}: schema {run['schema']!r} is not {SCHEMA!r}")
    run.setdefault("run", file.parent.name if file.name in (RUN_FILE, COMPRESS_LOG) else file.stem)
    run.setdefault("label", run["run"])
    return run


def accuracy_value(entry: float | dict[str, Any], metric: str) -> float | None:
    """One accuracy number from an ``accuracy`` entry: the float, or ``entry[metric]`` (else ``acc``)."""
    if isinstance(entry, (int, float)):
        return float(entry)
    value = entry.get(metric, entry.get("acc"))
    return None if value is None else float(value)


def render_table(runs: list[dict[str, Any]], metric: str = "acc_norm") -> str:
    """Markdown table: label, method, bits/weight, ppl per text, accuracy per task, decode speed."""
    texts = _keys(runs, "ppl")
    tasks = _keys(runs, "accuracy")
    speed = any(r.get("decode") for r in runs)
    whole = any(r.get("bits_per_weight_all_linears") is not None for r in runs)
    size = any(r.get("model_bytes") is not None for r in runs)
    head = (["run", "method", "bits/weight"] + (["bits/weight all linears"] if whole else [])
            + (["model MiB"] if size else []) + [f"ppl {t}" for t in texts]
            + [f"{t} {metric}" for t in tasks] + (["decode tok/s"] if speed else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in runs:
        cells = [str(r["label"]), str(r["method"]), f"{r['bits_per_weight']:.2f}"]
        if whole:
            cells.append(_fmt(r.get("bits_per_weight_all_linears"), "{:.2f}"))
        if size:
            cells.append(_fmt(None if r.get("model_bytes") is None else r["model_bytes"] / 2**20, "{:.1f}"))
        cells += [_fmt_ppl(r["ppl"].get(t)) for t in texts]
        cells += [_fmt(accuracy_value(r["accuracy"][t], metric) if t in r.get("accuracy", {}) else None, "{:.3f}")
                  for t in tasks]
        if speed:
            cells.append(_fmt((r.get("decode") or {}).get("tokens_per_s"), "{:.1f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ppl_vs_bits(runs: list[dict[str, Any]], path: Path) -> Path:
    """PNG: perplexity (log) against bits per weight (log2; :func:`bits_axis`), one panel per text,
    a colour per method."""
    texts = _finite_keys(runs, "ppl")
    if not texts:
        raise ValueError("no run has a finite perplexity to plot")
    key = bits_axis(runs)
    fig, axes = _figure(len(texts))
    for ax, text in zip(axes, texts):
        points = [(r[key], r["ppl"][text], r) for r in runs if _finite(r["ppl"].get(text))]
        _scatter(ax, points)
        ax.set_xscale("log", base=2)
        lo, hi = min(p[0] for p in points), max(p[0] for p in points)
        ticks = [t for t in (2, 3, 4, 5, 6, 8, 12, 16) if 0.8 * lo <= t <= 1.25 * hi]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("bits per weight (all linears, skipped ones at 16)" if key != "bits_per_weight"
                      else "effective bits per weight (compressed linears)")
        ax.set_title(f"perplexity on {text}")
    axes[0].set_ylabel("perplexity (log scale)")
    return _save(fig, axes, path)


def bits_axis(runs: list[dict[str, Any]]) -> str:
    """``bits_per_weight_all_linears`` when every run has it (skipped layers then count), else
    ``bits_per_weight``."""
    every = all(_finite(r.get("bits_per_weight_all_linears")) for r in runs)
    return "bits_per_weight_all_linears" if every else "bits_per_weight"


def plot_ppl_vs_speed(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG: perplexity against measured decode tokens/s, for runs with a decode benchmark; None if none has."""
    timed = [r for r in runs if (r.get("decode") or {}).get("tokens_per_s")]
    texts = _finite_keys(timed, "ppl")
    if not timed or not texts:
        return None
    fig, axes = _figure(len(texts))
    for ax, text in zip(axes, texts):
        points = [(r["decode"]["tokens_per_s"], r["ppl"][text], r) for r in timed if _finite(r["ppl"].get(text))]
        _scatter(ax, points)
        devices = sorted({str(r["decode"].get("device", "?")) for r in timed})
        ax.set_xlabel(f"decode tokens/s ({', '.join(devices)})")
        ax.set_title(f"perplexity on {text}")
    axes[0].set_ylabel("perplexity (log scale)")
    return _save(fig, axes, path)


def make_report(run_dirs: list[Path], out: Path, metric: str = "acc_norm") -> Path:
    """Read the runs, write ``out/report.md`` and the plots; returns the Markdown file's path."""
    runs = [load_run(Path(d)) for d in run_dirs]
    if not runs:
        raise ValueError("no run folders given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Results\n", render_table(runs, metric)]
    bits_png = plot_ppl_vs_bits(runs, out / "ppl_vs_bits.png")
    parts.append(f"\n![perplexity vs bits per weight]({bits_png.name})\n")
    speed_png = plot_ppl_vs_speed(runs, out / "ppl_vs_speed.png")
    if speed_png is not None:
        parts.append(f"\n![perplexity vs decode speed]({speed_png.name})\n")
    md = out / "report.md"
    md.write_text("".join(parts))
    return md


def _keys(runs: list[dict[str, Any]], field: str) -> list[str]:
    """Union of the keys of ``run[field]`` over runs, in first-seen order."""
    return list(dict.fromkeys(k for r in runs for k in (r.get(field) or {})))


def _finite_keys(runs: list[dict[str, Any]], field: str) -> list[str]:
    """Keys of :func:`_keys` that at least one run holds a finite number for (a panel needs a point)."""
    return [k for k in _keys(runs, field) if any(_finite((r.get(field) or {}).get(k)) for r in runs)]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else spec.format(x)


def _fmt_ppl(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" if x < 1000 else f"{x:,.0f}"


def _figure(panels: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5), squeeze=False)
    return fig, list(axes[0])


LABEL_ALL = 12  # label every point of a panel up to this many


def _scatter(ax, points: list[tuple[float, float, dict[str, Any]]]) -> None:
    """One colour per method; a line joins each method's Pareto front (the points that no run of
    the method beats at fewer or equal bits). Points carry their run label; with more than
    ``LABEL_ALL`` points only those on a front do (the table lists the rest)."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for _, _, r in points))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    on_front: set[tuple[str, float, float]] = set()
    for m in methods:
        pts = sorted((x, y) for x, y, r in points if r["method"] == m)
        ax.scatter(*zip(*pts), color=colours[m], label=m, s=30, zorder=3)
        front = pareto_front(pts)
        on_front.update((m, x, y) for x, y in front)
        ax.plot(*zip(*front), color=colours[m], linewidth=1.2, zorder=2)
    for x, y, r in points:
        if len(points) <= LABEL_ALL or (r["method"], x, y) in on_front:
            ax.annotate(str(r["label"]), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (bits, perplexity) points, sorted by bits, that have a lower perplexity than every
    point at fewer or equal bits."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def _save(fig, axes, path: Path) -> Path:
    import matplotlib.pyplot as plt

    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
