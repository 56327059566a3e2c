"""Tables and plots of the benchmark JSON (read by the CLI, docs/engine.md and gpu_all.sh).

The kernel, tune and decode benchmarks print through this module; it imports none of them
(nor Triton), so ``python -m gqsa.bench.report DIR`` runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re

BASELINES = ("fp16", "int4_tinygemm", "sparse24_cslt", "triton24_fp16", "triton24_int4")
TARGETS = {  # batch-1 targets on the LLaMA-2-7B shapes, W4 S50 G16 (gqsa speedup over each)
    "fp16": 4.0, "int4_tinygemm": 1.7, "triton24_fp16": 2.3, "triton24_int4": 1.0}


def times(result: dict) -> dict[tuple, float]:
    """(n, k, m, method) -> microseconds, for records that ran."""
    return {(r["n"], r["k"], r["m"], r["method"]): r["us"] for r in result["records"] if "us" in r}


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _fmt(x: float | None, spec: str = "7.1f") -> str:
    return format(x, spec) if x is not None and x == x else " " * (int(spec.split(".")[0]) - 1) + "-"


def shape_rows(result: dict, model: str, m: int, sparsity: int = 50) -> list[dict]:
    """One summary row per shape of ``model`` at batch m: times, speedups, % copy bandwidth."""
    t = times(result)
    rows = []
    for r in result["records"]:
        if r.get("model") != model or r.get("m") != m or r.get("method") != f"gqsa_S{sparsity}" or "us" not in r:
            continue
        n, k, us = r["n"], r["k"], r["us"]
        row = dict(shape=f"{n}x{k}", m=m, gqsa=us, bw=r["bytes"] / (us * 1e-6) / result["copy_bw"],
                   floor=r.get("floor_us"))
        for b in BASELINES:
            row[b] = t.get((n, k, m, b))
            row["x_" + b] = row[b] / us if row[b] else None
        rows.append(row)
    return rows


def print_kernel_table(result: dict, models=("llama2-7b",), batches=(1, 8, 16)) -> None:
    """Print µs of each method and gqsa S50's speedup over each; targets last.

    ``floor`` is the read floor of the packed bytes (:mod:`gqsa.bench.floor`); ``%floor``
    = floor / gqsa time, how close the kernel is to merely reading its bytes.
    """
    print(f"\ndevice {result['device']}  copy bandwidth {result['copy_bw'] / 1e12:.2f} TB/s (read+write)")
    head = ("shape        M   gqsaS50    fp16   tiny4  cslt24   t24h  t24i4 | xfp16 xtiny xcslt  xt24 xt24i4"
            "  %copyBW  floor %floor")
    print(head)
    for model in models:
        for m in batches:
            for r in shape_rows(result, model, m):
                fl = r["floor"]
                print(f"{r['shape']:<11}{m:>3} {r['gqsa']:8.1f} " + " ".join(_fmt(r[b]) for b in BASELINES) + " | "
                      + " ".join(_fmt(r['x_' + b], '5.2f') for b in BASELINES) + f"  {100 * r['bw']:6.1f}%"
                      + f" {_fmt(fl, '6.1f')} {_fmt(100 * fl / r['gqsa'] if fl else None, '5.0f')}%")
    print_targets(result)


def print_targets(result: dict) -> None:
    """Geometric-mean speedups on the LLaMA-2-7B shapes against the issue's targets."""
    for m, goals in ((1, TARGETS), (16, {"fp16": 3.0})):
        rows = shape_rows(result, "llama2-7b", m)
        for b, goal in goals.items():
            got = _geomean([r["x_" + b] for r in rows if r["x_" + b]])
            print(f"target batch {m:>2} gqsa S50 vs {b:<14} >= {goal:.2f}x: {got:.2f}x "
                  f"{'MET' if got >= goal else 'missed'}")
        if m == 1:
            bw = _geomean([r["bw"] for r in rows])
            print(f"target batch  1 packed bytes / copy bandwidth >= 85%: {100 * bw:.1f}% "
                  f"{'MET' if bw >= 0.85 else 'missed'}")
            ceil = _geomean([r["fp16"] / r["floor"] for r in rows if r["fp16"] and r["floor"]])
            print(f"ceiling: FP16 time / read floor of gqsa's bytes = {ceil:.2f}x (no kernel reading "
                  f"these bytes can beat FP16 by more)")


def print_formats(result: dict, batches=(1, 16, 40, 128)) -> None:
    """Other bit widths / group sizes (``--formats`` records) beside W4 G16 at S50: one line per
    shape and format, microseconds and x FP16 per batch, with the batch-1 read floor."""
    t = times(result)
    recs = [r for r in result["records"] if "us" in r and re.fullmatch(r"gqsa_S50(_b\d+g\d+)?", r["method"])]
    if not any("_b" in r["method"] for r in recs):
        return
    ms = [m for m in batches if any(r["m"] == m for r in recs)]
    print("\nformats at S50 (uniform rows): microseconds (x FP16) per batch; floor = batch-1 read floor")
    print(f"{'shape':<12} {'format':<18} {'MB':>6} {'floor':>6} | " + " | ".join(f"{'M=' + str(m):>14}" for m in ms))
    shapes = {(r["n"], r["k"]) for r in recs if "_b" in r["method"]}
    for key in sorted({(r["n"], r["k"], r["method"]) for r in recs if (r["n"], r["k"]) in shapes}):
        by_m = {r["m"]: r for r in recs if (r["n"], r["k"], r["method"]) == key}
        any_r = next(iter(by_m.values()))
        cells = []
        for m in ms:
            r, fp = by_m.get(m), t.get((key[0], key[1], m, "fp16"))
            cells.append(f"{r['us']:7.1f} ({fp / r['us']:4.2f}x)" if r and fp else f"{'-':>14}")
        print(f"{key[0]:>5}x{key[1]:<6} {key[2]:<18} {any_r['bytes'] / 1e6:6.2f} {_fmt(any_r.get('floor_us'), '6.1f')} | "
              + " | ".join(cells))


def plot_kernels(result: dict, path: str) -> None:
    """Speedup over fp16 by batch (geomean over shapes) per method; skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no plot written")
        return
    t = times(result)
    methods = sorted({r["method"] for r in result["records"]
                      if "us" in r and (r["method"] in BASELINES or re.fullmatch(r"gqsa_S\d+", r["method"]))})
    batches = sorted({r["m"] for r in result["records"] if "m" in r})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for meth in methods:
        ys = [_geomean([t[(n, k, m, "fp16")] / us for (n, k, mm, mt), us in t.items()
                        if mm == m and mt == meth and (n, k, m, "fp16") in t]) for m in batches]
        ax.plot(batches, ys, marker="o", label=meth)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (rows of x)")
    ax.set_ylabel("speedup over fp16 cuBLAS (geomean of shapes)")
    ax.set_title(result["device"])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def print_all_shapes(result: dict, m: int = 1) -> None:
    """Batch-m microseconds of every shape: gqsa at each sparsity beside FP16 and tinygemm."""
    t = times(result)
    sp = sorted({int(r["method"][6:]) for r in result["records"] if re.fullmatch(r"gqsa_S\d+", r.get("method", ""))})
    print(f"\nall shapes, batch {m}, microseconds (gqsa: dispatch path, W4 G16, uniform rows)")
    print("model        shape          fp16  tiny4 " + " ".join(f"  S{s:<4}" for s in sp) + "  S50 x fp16")
    for model, n, k in sorted({(r.get("model", ""), r["n"], r["k"]) for r in result["records"]}, key=str):
        row = [t.get((n, k, m, "fp16")), t.get((n, k, m, "int4_tinygemm"))] + [t.get((n, k, m, f"gqsa_S{s}"))
                                                                               for s in sp]
        g50 = t.get((n, k, m, "gqsa_S50"))
        x = row[0] / g50 if row[0] and g50 else None
        print(f"{model:<12} {n:>5}x{k:<6} " + " ".join(_fmt(v) for v in row) + f"  {_fmt(x, '6.2f')}")


def print_tune_summary(recs: list[dict]) -> None:
    """The tune sweeps' records (:mod:`gqsa.bench.tune`): the best config per case, the schedule sweep
    and the small-M crossover."""
    print("\n== decode rows schedule (S50 W4 G16), microseconds ==")
    for key in sorted({(r["n"], r["k"], r["pattern"], r["m"]) for r in recs if r.get("sweep") == "rows"}):
        rs = [r for r in recs if r.get("sweep") == "rows" and (r["n"], r["k"], r["pattern"], r["m"]) == key]
        best = min((r for r in rs if r["kind"] == "rows"), key=lambda r: r["us"])
        cfgs = " ".join(f"{r['cfg']}={r['us']:.1f}" for r in rs if r["kind"] == "rows")
        noplan = next(r["us"] for r in rs if r["kind"] == "rows_noplan")
        print(f"{key[0]}x{key[1]} {key[2]:<8} M={key[3]:<3} best {best['us']:6.1f} ({best['cfg']}) "
              f"no-plan {noplan:6.1f} | {cfgs}")
    print("\n== decode tasks schedule, batch 1, microseconds ==")
    for key in sorted({(r["n"], r["k"], r["pattern"]) for r in recs if r.get("sweep") == "tasks"}):
        rs = [r for r in recs if r.get("sweep") == "tasks" and (r["n"], r["k"], r["pattern"]) == key]
        print(f"{key[0]}x{key[1]} {key[2]:<8} " + " ".join(f"{r['kind'][6:]}={r['us']:.1f}" for r in rs))
    print("\n== small M (S50 W4 G16), microseconds ==")
    for key in sorted({(r["n"], r["k"], r["m"]) for r in recs if r.get("sweep") == "small_m"}):
        rs = [r for r in recs if r.get("sweep") == "small_m" and (r["n"], r["k"], r["m"]) == key]
        by = {r["kind"]: r for r in rs if r["kind"] != "gemm"}
        g = min((r for r in rs if r["kind"] == "gemm"), key=lambda r: r["us"])
        gv = (f"gemv {by['gemv']['us']:7.1f}  smallm {by['smallm']['us']:7.1f}" if "gemv" in by
              else " " * 27)
        print(f"{key[0]}x{key[1]} M={key[2]:<5} fp16 {by['fp16']['us']:7.1f}  {gv}  dense {by['dense']['us']:7.1f}"
              f"  gemm {g['us']:7.1f} ({g['cfg']}) | " + " ".join(f"{r['cfg']}={r['us']:.1f}" for r in rs
                                                                   if r["kind"] == "gemm"))


def print_decode_table(result: dict) -> None:
    """The decode benchmark's table (:mod:`gqsa.bench.decode`): TTFT and tokens/s per variant, x FP16."""
    recs = [r for r in result["records"] if "error" not in r]
    for r in result["records"]:
        if "error" in r:
            print(f"{r['variant']}: {r['error']}")
    if not recs:
        return
    base = recs[0]  # FP16, or the first variant that ran when FP16 did not
    cfg = result["config"]
    print(f"\ndecode, {result['device']}, {cfg.get('shape', '7b')} shape, prompt {cfg['prompt']}, {cfg['tokens']} new "
          f"tokens; ratios against {base['variant']}")
    cols = [k for k in base if k.startswith("tok_s")]
    print("variant      TTFT ms (x fp16, mode)  " + "  ".join(f"{c + ' (x fp16, mode)':>26}" for c in cols)
          + "   peak GB  weights GB")
    for r in recs:
        ttft = f"{r['ttft_ms']:8.1f} ({r['ttft_ms'] / base['ttft_ms']:4.2f}x, {r.get('best_ttft', 'eager'):>5})"
        print(f"{r['variant']:<12}{ttft}  " + "  ".join(
            f"{r[c]:10.1f} ({r[c] / base[c]:4.2f}x, {r.get('best_' + c[6:], 'graph'):>7})" for c in cols)
            + f"  {r['peak_gb']:8.2f}  {r['weights_gb']:9.2f}")


def main(argv: list[str] | None = None) -> None:
    """``python -m gqsa.bench.report DIR``: print the tables of DIR's tune/kernels/decode JSON."""
    ap = argparse.ArgumentParser(prog="gqsa bench report",
                                 description="Print the tables of a benchmark folder's tune/kernels/decode JSON.")
    ap.add_argument("out", nargs="?", default="bench_out", help="folder holding tune.json, kernels.json, decode.json")
    out = ap.parse_args(argv).out
    path = os.path.join(out, "tune.json")
    if os.path.exists(path):
        with open(path) as f:
            print_tune_summary(json.load(f))
    path = os.path.join(out, "kernels.json")
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
        print_all_shapes(result, 1)
        print_formats(result)
        print_kernel_table(result)
    path = os.path.join(out, "decode.json")
    if os.path.exists(path):
        with open(path) as f:
            print_decode_table(json.load(f))


if __name__ == "__main__":
    main()
