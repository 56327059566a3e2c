"""The ``gqsa`` command: compress, eval, generate, info, demo, bench, report.

Only argument parsing and printing live here; each command calls library functions
with explicit parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gqsa.config import GQSAConfig
from gqsa.data import DEFAULT_CALIBRATION_TEXT
from gqsa.format import SUPPORTED_BITS


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a zero or negative count is a clear usage error, never a default)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def count_int(text: str) -> int:
    """argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _add_runtime(p: argparse.ArgumentParser, verify: bool = True) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 or auto (fp32 on CPU, fp16 on GPU)")
    if verify:
        _add_no_verify(p)


def _add_no_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the weight files that gqsa recorded at save time (huge models)")


def _add_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a causal LM folder into a gqsa folder")
    p.add_argument("model", help="model folder, hub id, or 'smollm2' (the offline default)")
    p.add_argument("out", help="output folder (written atomically)")
    p.add_argument("--method", default="gqsa", choices=["gqsa", "rtn", "gptq", "sparsegpt", "wanda"],
                   help="gqsa, or a baseline in the same pipeline (saved as a dense fake-quant folder)")
    p.add_argument("--pattern", default=None, help="baselines: dense, unstructured or N:M such as 2:4")
    d = GQSAConfig()
    p.add_argument("--sparsity", type=float, default=None, help=f"fraction pruned (gqsa default {d.sparsity})")
    p.add_argument("--bits", type=int, default=None, help=f"bits per kept weight: {', '.join(map(str, SUPPORTED_BITS))} "
                                                          f"(gqsa default {d.bits})")
    p.add_argument("--group-size", type=int, default=None, help=f"G (gqsa default {d.group_size}; baselines 128)")
    p.add_argument("--balance", default=None, choices=["row", "layer"],
                   help=f"same groups per row, or per layer (default {d.balance})")
    p.add_argument("--saliency", default=None, choices=["obs", "wanda"], help=f"group importance score (default {d.saliency})")
    p.add_argument("--mask", default=None, choices=["adaptive", "static"],
                   help="choose the groups once up front (static, the default), or per column block as the joint "
                        "update proceeds (needs --balance row and --saliency obs)")
    p.add_argument("--sparsity-ramp", type=float, default=None,
                   help="gqsa: spread the sparsity over depth, from sparsity*(1-r) in the first block to "
                        "sparsity*(1+r) in the last (same mean); 0 = uniform (default)")
    p.add_argument("--allocation", default=None, choices=["uniform", "owl", "owl-linear"],
                   help="gqsa: spread the sparsity by each block's (owl, the default) or each linear's (owl-linear) "
                        "share of outlier weights on the calibration data, at the uniform run's size; uniform: "
                        "every linear at --sparsity")
    p.add_argument("--bits-per-weight", type=float, default=None,
                   help="gqsa: a size budget instead of --sparsity: stored bits per weight of the compressed linears "
                        "(format v3, as `gqsa info` counts them), hit within 0.01; the allocation spreads it")
    p.add_argument("--allocation-strength", type=float, default=None,
                   help=f"gqsa: OWL's lambda, sparsities span sparsity +- this (default {d.allocation_strength})")
    p.add_argument("--protect-ratio", type=float, default=None,
                   help="gqsa: keep, in every row, the groups of input channels whose calibration RMS exceeds this "
                        "many times the layer's median (massive activations); 0 = off (default)")
    p.add_argument("--sym", action="store_true", help="symmetric quantization")
    p.add_argument("--scale-format", default=None, choices=["fp16", "log8"],
                   help="baselines: store group scales as fp16 (default, as GPTQ tools do) or as gqsa's 8-bit log "
                        "codes under an fp16 row factor (log8: rtn, or gptq with static act-order)")
    p.add_argument("--no-clip-search", action="store_true", help="plain min-max ranges")
    p.add_argument("--clip-search", action="store_true",
                   help="rtn, sparsegpt: search each group's range shrink too (gqsa and gptq do by default)")
    p.add_argument("--act-order", default=None, choices=["static", "group", "off"],
                   help="gptq: column order (default static: by decreasing Hessian diagonal, grids of the "
                        "contiguous groups fixed up front; group: groups follow that order; off: left to right); "
                        "gqsa: static (the default) or off")
    p.add_argument("--act-order-grids", default=None, choices=["compensated", "original"],
                   help="gqsa with act-order: fix each group's grid from the weights after a pruning-only pass "
                        "(compensated, the default) or before it (original, GPTQ's static groups)")
    p.add_argument("--skip", nargs="*", default=None, help=f"module names kept dense (default: {' '.join(d.skip)})")
    p.add_argument("--calib", default=DEFAULT_CALIBRATION_TEXT,
                   help="calibration text: builtin name, .txt/.jsonl/folder, or wikitext2/c4")
    p.add_argument("--nsamples", type=positive_int, default=128,
                   help="calibration windows (default 128; a 2-core CPU takes about a minute per block at "
                        "128 x 2048: use fewer for a quick run)")
    p.add_argument("--seqlen", type=positive_int, default=2048, help="tokens per calibration window (default 2048)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="calibration windows per block forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-stream", action="store_true",
                   help="gqsa: load the whole dense model into CPU memory first, instead of reading one block at a "
                        "time from a local folder's safetensors shards (the default; same result, docs/streaming.md)")
    _add_stages(p)
    _add_runtime(p)


def _add_stages(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("two-stage optimization (off by default) and resume")
    g.add_argument("--bqpo-epochs", type=count_int, default=0, help="BQPO epochs per block (0: off; EfficientQAT: 2)")
    g.add_argument("--bqpo-lr", type=float, default=1e-5, help="BQPO learning rate of the kept weights")
    g.add_argument("--bqpo-lr-scale", type=float, default=1e-4, help="BQPO learning rate of scales")
    g.add_argument("--bqpo-lr-zero", type=float, default=1e-4, help="BQPO learning rate of zero points")
    g.add_argument("--bqpo-batch-size", type=positive_int, default=2)
    g.add_argument("--bqpo-local-targets", action="store_true",
                   help="train each block against the dense block on the same inputs, not the FP16 model's chain")
    g.add_argument("--e2e-epochs", type=count_int, default=0, help="E2E-OQP epochs (0: off; EfficientQAT: 1)")
    g.add_argument("--e2e-data", default=DEFAULT_CALIBRATION_TEXT, help="E2E-OQP training text (builtin name or path)")
    g.add_argument("--e2e-nsamples", type=positive_int, default=128, help="E2E-OQP training windows")
    g.add_argument("--e2e-seqlen", type=positive_int, default=1024)
    g.add_argument("--e2e-lr", type=float, default=1e-5, help="E2E-OQP learning rate of the scales")
    g.add_argument("--e2e-batch-size", type=positive_int, default=4)
    g.add_argument("--e2e-grad-accum", type=positive_int, default=8)
    g.add_argument("--e2e-train-zeros", action="store_true", help="also train zero points (rounded, STE)")
    g.add_argument("--e2e-distill", type=float, default=0.0,
                   help="weight in [0, 1] of a distillation term (KL to the dense model's logits) in E2E-OQP's loss; "
                        "keeps a copy of the dense model in memory (default 0: LM loss only)")
    g.add_argument("--e2e-temperature", type=float, default=1.0, help="temperature of the distillation term")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its block checkpoints")
    g.add_argument("--checkpoint-dir", default=None, help="per-block checkpoints (default: OUT.checkpoint)")


def _stage_configs(a: argparse.Namespace) -> dict:
    """The ``bqpo`` and ``e2e`` fields of the GQSAConfig from the stage options (None: off)."""
    from gqsa.config import BQPOConfig, E2EConfig
    bqpo = BQPOConfig(epochs=a.bqpo_epochs, batch_size=a.bqpo_batch_size, lr_weight=a.bqpo_lr,
                      lr_scale=a.bqpo_lr_scale, lr_zero=a.bqpo_lr_zero,
                      fp_targets=not a.bqpo_local_targets) if a.bqpo_epochs > 0 else None
    e2e = E2EConfig(epochs=a.e2e_epochs, lr=a.e2e_lr, batch_size=a.e2e_batch_size, grad_accum=a.e2e_grad_accum,
                    train_zeros=a.e2e_train_zeros, distill=a.e2e_distill,
                    temperature=a.e2e_temperature) if a.e2e_epochs > 0 else None
    return {"bqpo": bqpo, "e2e": e2e}


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model folder (original or compressed)")
    p.add_argument("model")
    p.add_argument("--ppl", nargs="*", default=["boolq"], help="held-out texts (builtin names or paths)")
    p.add_argument("--tasks", nargs="*", default=[], help="multiple-choice tasks: piqa, arc_easy, ... or FILE.jsonl")
    p.add_argument("--limit", type=positive_int, default=None, help="first N items of each task")
    p.add_argument("--seqlen", type=positive_int, default=1024)
    p.add_argument("--max-windows", type=positive_int, default=None,
                   help="evaluate only the first N windows (default: the whole text; boolq at 1024 tokens is "
                        "about 400 windows, 15 minutes on a 2-core CPU)")
    p.add_argument("--json", default=None, help="write the results here as a run log that `gqsa report` reads "
                                                "(default: print only)")
    _add_runtime(p)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="greedy generation from a prompt")
    p.add_argument("model")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    _add_runtime(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gqsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_compress(sub)
    _add_eval(sub)
    _add_generate(sub)
    p = sub.add_parser("info", help="size, bits per weight and sparsity of a compressed folder")
    p.add_argument("path")
    p.add_argument("--layers", action="store_true", help="print every layer")
    _add_no_verify(p)
    p = sub.add_parser("demo", help="the offline demo: SmolLM2 compressed at W4 S50 G16 on CPU, before vs after")
    p.add_argument("--out", default=None, help="where to keep the compressed model (default: a cache folder)")
    p.add_argument("--windows", type=positive_int, default=16, help="evaluation windows of 1024 tokens")
    p = sub.add_parser("report", help="gather run logs into a Markdown table and plots")
    p.add_argument("runs", nargs="+", help="run folders holding run.json")
    p.add_argument("--out", required=True)
    p = sub.add_parser("bench", help="GPU benchmarks: 'kernels', 'decode', 'tune' or 'report' (options after it: --help)")
    p.add_argument("what", choices=["kernels", "decode", "tune", "report"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    return parser


def cmd_bench(a: argparse.Namespace) -> int:
    import importlib
    importlib.import_module(f"gqsa.bench.{a.what}").main(a.rest)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from gqsa.app.run_report import make_report
    print(make_report([Path(r) for r in a.runs], Path(a.out)))
    return 0


def cmd_compress(a: argparse.Namespace) -> int:
    from gqsa.app.workflow import TrainText, compress_folder
    from gqsa.loading import pick_device, pick_dtype
    device = pick_device(a.device)
    if a.method != "gqsa":
        return _compress_baseline(a, device, pick_dtype(a.dtype, device))
    if a.bits_per_weight is not None and a.sparsity is not None:
        raise ValueError("pass --sparsity or --bits-per-weight, not both (the budget chooses the sparsity)")
    if a.scale_format is not None:
        raise ValueError("--scale-format is a baseline setting: gqsa always stores its scales as 8-bit log codes")
    given = {"group_size": a.group_size, "sparsity": a.sparsity, "bits": a.bits, "balance": a.balance,
             "saliency": a.saliency, "mask": a.mask, "sparsity_ramp": a.sparsity_ramp,
             "allocation": _allocation(a), "allocation_strength": a.allocation_strength,
             "bits_per_weight": a.bits_per_weight, "protect_ratio": a.protect_ratio,
             "act_order": _gqsa_act_order(a.act_order), "act_order_grids": a.act_order_grids,
             "skip": None if a.skip is None else tuple(a.skip)}
    config = GQSAConfig(sym=a.sym, clip_search=not a.no_clip_search, **_stage_configs(a),
                        **{k: v for k, v in given.items() if v is not None})
    log = compress_folder(a.model, a.out, config, a.calib, a.nsamples, a.seqlen, device,
                          pick_dtype(a.dtype, device), a.seed, a.batch_size, a.overwrite,
                          e2e_text=TrainText(a.e2e_data, a.e2e_nsamples, a.e2e_seqlen), resume=a.resume,
                          checkpoint_dir=a.checkpoint_dir, stream=False if a.no_stream else None)
    _print_compress_summary(log, a.out)
    return 0


def _allocation(a: argparse.Namespace) -> str | None:
    """--allocation; with --sparsity-ramp and no --allocation, the ramp decides (uniform)."""
    return "uniform" if a.allocation is None and a.sparsity_ramp else a.allocation


def _gqsa_act_order(value: str | None) -> bool | None:
    """--act-order for gqsa: static -> True, off -> False, unset -> the config's default."""
    if value == "group":
        raise ValueError("gqsa's groups are the format's contiguous inputs: --act-order takes static or off for gqsa "
                         "(group is a GPTQ baseline setting)")
    return None if value is None else value == "static"


def _compress_baseline(a: argparse.Namespace, device, dtype) -> int:
    from gqsa.app.workflow import compress_baseline_folder
    log = compress_baseline_folder(a.model, a.out, a.method, a.pattern, a.bits, a.group_size, a.sparsity, a.calib,
                                   a.nsamples, a.seqlen, device, dtype, a.seed, a.batch_size, a.overwrite,
                                   sym=a.sym, clip_search=True if a.clip_search else (False if a.no_clip_search else None),
                                   **({} if a.skip is None else {"skip": tuple(a.skip)}),
                                   **({} if a.act_order is None else {"act_order": a.act_order}),
                                   **({} if a.scale_format is None else {"scale_format": a.scale_format}))
    _table([("output", a.out), ("method", f"{a.method} {log['settings']}"),
            ("bits per weight (compressed layers; gqsa.size)", f"{log['bits_per_weight']:.3f}"),
            *_whole_model_rows(log), ("time", f"{log['seconds']:.1f} s")])
    return 0


def _print_compress_summary(log: dict, out: str) -> None:
    mb = 1 / 2**20
    orig = log.get("original_bytes")
    rows = [("output", out),
            ("size before", f"{orig * mb:.1f} MiB" if orig else "n/a"),
            ("size after", f"{log['compressed_bytes'] * mb:.1f} MiB"),
            ("bits per weight (compressed layers)", f"{log['bits_per_weight']:.3f}"), *_whole_model_rows(log)]
    rows.append(("stages", ", ".join(log["stages"])))
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in log["times"].items()]
    rows.append(("peak memory", f"{log['stages']['oneshot']['peak_memory_bytes'] * mb:.0f} MiB"))
    _table(rows)


def _whole_model_rows(log: dict) -> list[tuple[str, str]]:
    """Bits over all block linears (skipped ones at 16) and whole-model bytes (docs/results.md, Bits accounting)."""
    return [("bits per weight (all linears, skipped at 16)", f"{log['bits_per_weight_all_linears']:.3f}"),
            ("whole model (embeddings, norms, head included)",
             f"{log['model_bytes'] / 2**20:.1f} MiB, {log['bits_per_param']:.3f} bits per parameter")]


def _table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_eval(a: argparse.Namespace) -> int:
    from gqsa.app.jobs import evaluate_perplexities
    from gqsa.loading import pick_device, pick_dtype
    device = pick_device(a.device)
    results = evaluate_perplexities(a.model, a.ppl, a.seqlen, device, pick_dtype(a.dtype, device), a.max_windows,
                                    a.tasks, a.limit, verify=not a.no_verify)
    for name, r in results["ppl_windows"].items():
        print(f"{name}: perplexity {r['ppl']:.3f} over {r['windows']} windows of {r['seqlen']} tokens")
    for name, r in results["accuracy"].items():
        print(f"{name}: acc {r['acc']:.4f}  acc_norm {r['acc_norm']:.4f}  (n={r['n']})")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from gqsa.app.jobs import generate_text
    from gqsa.loading import pick_device, pick_dtype
    if not a.prompt.strip() and not a.chat:
        raise ValueError("--prompt is empty: give some text to continue (or --chat to answer an empty message)")
    device = pick_device(a.device)
    print(generate_text(a.model, a.prompt, a.max_new_tokens, device, pick_dtype(a.dtype, device), a.chat,
                        verify=not a.no_verify))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from gqsa.app.jobs import folder_info
    info = folder_info(a.path, verify=not a.no_verify)
    rows = [(k, str(v)) for k, v in info.items() if k not in ("layers", "config")]
    if "format_version" in info["config"]:
        rows.insert(1, ("format_version", str(info["config"]["format_version"])))
    rows.insert(-3, ("config", str(_config_summary(info["config"]))))
    _table(rows)
    if a.layers:
        for layer in info["layers"]:
            print(f"  {layer['name']:<40} {layer['shape']}  sparsity {layer['sparsity']:.3f}  "
                  f"{layer['bits_per_weight']:.2f} bits/weight")
    return 0


def _config_summary(config: dict) -> dict:
    """The folder's config for display: a per-layer sparsity table shortened to its range (``--layers``
    lists every layer)."""
    per_layer = config.get("layer_sparsity")
    if not isinstance(per_layer, dict) or not per_layer:
        return config
    v = sorted(per_layer.values())
    return {**config, "layer_sparsity": f"{len(v)} layers, {v[0]:.3f} to {v[-1]:.3f} (--layers lists them)"}


def cmd_demo(a: argparse.Namespace) -> int:
    from gqsa.app.demo import run_demo
    run_demo(a.out, a.windows)
    return 0


COMMANDS = {"compress": cmd_compress, "eval": cmd_eval, "generate": cmd_generate, "info": cmd_info, "demo": cmd_demo, "report": cmd_report,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gqsa`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"gqsa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ngqsa {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(a: argparse.Namespace) -> str:
    """What an interrupted ``gqsa compress`` kept, and how to continue it."""
    if a.command != "compress" or a.method != "gqsa":
        return ""
    from gqsa.train.checkpoint import finished_blocks
    folder = Path(a.checkpoint_dir or f"{a.out}.checkpoint")
    n = finished_blocks(folder)
    if not n:
        return "; no block had finished, nothing was written"
    again = " ".join(sys.argv[1:]) if "--resume" in sys.argv else " ".join(sys.argv[1:] + ["--resume"])
    return f"; {n} finished blocks are kept in {folder}. Continue with: gqsa {again}"


if __name__ == "__main__":
    sys.exit(main())
