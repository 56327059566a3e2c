"""End-to-end decode benchmark: FP16 vs gqsa on a LLaMA-2-7B-shaped model with random weights.

The model is transformers' ``LlamaForCausalLM`` built from a config (random weights,
no checkpoint). For gqsa every linear of every decoder layer is replaced by a random
``GQSLinear`` (W4 G16, uniform rows, sparsity S; embeddings and lm_head stay fp16);
the compressor is not run. A minimal gpt-fast-style loop drives the model's own
modules (norms, projections, MLP, rotary tables) with a static KV cache and SDPA, so
a whole greedy step (forward, argmax, feeding the token back) is one CUDA graph.

Reports, per variant: time to first token for a 512-token prompt (batch 1, eager
prefill + argmax), decode tokens/s at batch 1 and 8 over 256 new tokens, and the
peak GPU memory of the run. Run: ``python -m gqsa.bench.decode --out DIR``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from gqsa.bench import require_triton
from gqsa.bench.report import print_decode_table
from gqsa.bench.synth import random_packed
from gqsa.bench.timing import capture_graph, event_times
from gqsa.layer import GQSLinear

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
SHAPES = {
    "7b": LLAMA2_7B,
    "13b": {**LLAMA2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
            "num_attention_heads": 40, "num_key_value_heads": 40},
    # LLaMA-2-70B: 138 GB in fp16, which just fits one H200 (139 GiB) beside a small KV cache
    "70b": {**LLAMA2_7B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8},
}


def random_llama(layers: int | None, dtype: torch.dtype, seed: int, shape: str = "7b") -> LlamaForCausalLM:
    """LLaMA-2-shaped model (``shape`` in :data:`SHAPES`, its first ``layers`` blocks, all by
    default) built on CUDA in ``dtype`` with N(0, 0.02) weights."""
    config = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():  # explicit N(0, 0.02) weights and unit norms, whatever transformers initialized
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02, generator=gen)
    return model.to(dtype).eval()


def compress_randomly(model: LlamaForCausalLM, sparsity: float, seed: int) -> None:
    """Replace each decoder linear (nn.Linear or an earlier GQSLinear) by a random GQSLinear (W4 G16, uniform rows)."""
    for i, layer in enumerate(model.model.layers):
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if isinstance(lin, (nn.Linear, GQSLinear)):
                    p = random_packed(lin.out_features, lin.in_features, 16, 4, sparsity, "uniform", "cuda",
                                      seed + i)
                    new = GQSLinear.from_packed(p)
                    new.prepare_kernels()
                    setattr(parent, name, new)
    torch.cuda.empty_cache()


class StaticDecoder:
    """Forward pass over a LlamaForCausalLM's modules with a static KV cache [B, H, T_max, D]."""

    def __init__(self, model: LlamaForCausalLM, batch: int, max_len: int, compiled: bool = False):
        cfg = model.config
        # decode steps (one token) may run each block through torch.compile: one compiled
        # graph serves all 32 layers (modules are inlined as inputs); the prompt stays eager
        self.block = torch.compile(decoder_block, fullgraph=True, dynamic=False) if compiled else decoder_block
        self.model, self.max_len = model, max_len
        hd = cfg.hidden_size // cfg.num_attention_heads
        shape = (batch, cfg.num_key_value_heads, max_len, hd)
        dtype = model.model.embed_tokens.weight.dtype
        self.cache = [(torch.zeros(shape, dtype=dtype, device="cuda"), torch.zeros(shape, dtype=dtype, device="cuda"))
                      for _ in model.model.layers]
        self.slots = torch.arange(max_len, device="cuda")  # cache positions, for the causal mask
        pos = self.slots[None]
        probe = torch.zeros(1, dtype=dtype, device="cuda")
        self.cos, self.sin = model.model.rotary_emb(probe, pos)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] of the last position; ids [B, T], pos [T] (device tensor)."""
        m = self.model.model
        h = m.embed_tokens(ids)
        cos, sin = self.cos[:, pos], self.sin[:, pos]
        mask = (pos[:, None] >= self.slots[None, :])[None, None]
        block = self.block if ids.shape[1] == 1 else decoder_block
        for layer, (kc, vc) in zip(m.layers, self.cache):
            h = block(layer, h, cos, sin, mask, kc, vc, pos)
        return self.model.lm_head(m.norm(h[:, -1]))


def decoder_block(layer, h, cos, sin, mask, kc, vc, pos):
    """One LLaMA decoder layer over the static cache; returns the new hidden states."""
    b, t = h.shape[:2]
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    kc.index_copy_(2, pos, k)
    vc.index_copy_(2, pos, v)
    o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=q.shape[1] != kc.shape[1])
    h = h + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))


def time_to_first_token(model, prompt_len: int, new_tokens: int, graph: bool = False) -> float:
    """Milliseconds for a batch-1 prompt: prefill through the static cache + argmax, eager or
    as one CUDA graph replay (which removes the per-kernel launch and Python cost of the eager
    step: gqsa's custom op adds a few tens of microseconds of host time per linear)."""
    dec = StaticDecoder(model, 1, prompt_len + new_tokens)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), device="cuda")
    pos = torch.arange(prompt_len, device="cuda")
    dec.forward(ids, pos)  # compile and warm up first
    if not graph:
        return statistics.median(event_times(lambda: dec.forward(ids, pos).argmax(-1), 10)) / 1e3
    prefill = capture_graph(lambda: dec.forward(ids, pos).argmax(-1))
    return statistics.median(event_times(prefill.replay, 10)) / 1e3


def decode_tokens_per_s(model, batch: int, prompt_len: int, new_tokens: int, compiled: bool = False) -> float:
    """Greedy tokens/s over ``new_tokens`` steps, each step one CUDA graph replay
    (with ``compiled``, the blocks inside the graph are torch.compile'd)."""
    dec = StaticDecoder(model, batch, prompt_len + new_tokens, compiled)
    dec.forward(torch.randint(0, 32000, (batch, prompt_len), device="cuda"), torch.arange(prompt_len, device="cuda"))
    ids = torch.randint(0, 32000, (batch, 1), device="cuda")
    pos = torch.full((1,), prompt_len, device="cuda", dtype=torch.long)

    def step():
        nxt = dec.forward(ids, pos).argmax(-1)
        ids.copy_(nxt[:, None])
        pos.add_(1)
    graph = capture_graph(step)  # its warm-up call advanced pos: rewind
    pos.fill_(prompt_len)

    def run():
        for _ in range(new_tokens):
            graph.replay()
    ms = statistics.median(event_times(run, 1)) / 1e3
    assert int(pos.item()) == prompt_len + new_tokens
    return batch * new_tokens / (ms / 1e3)


def bench_variant(model, name: str, args) -> dict:
    """Time to first token and tokens/s of one variant; a variant that runs out of GPU memory
    (FP16 at 70B shape with a large batch) is recorded as ``{"variant", "error"}``."""
    try:
        return _bench_variant(model, name, args)
    except torch.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        print(f"{name:<12} out of GPU memory: {str(e).splitlines()[0]}", flush=True)
        return dict(variant=name, error="out of GPU memory")


def _bench_variant(model, name: str, args) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    rec = dict(variant=name, weights_gb=sum(t.numel() * t.element_size() for t in
                                            list(model.parameters()) + list(model.buffers())) / 1e9)
    for mode in ("eager", "graph"):
        rec[f"ttft_{mode}_ms"] = time_to_first_token(model, args.prompt, args.tokens, mode == "graph")
    rec["best_ttft"] = min(("eager", "graph"), key=lambda mode: rec[f"ttft_{mode}_ms"])
    rec["ttft_ms"] = rec[f"ttft_{rec['best_ttft']}_ms"]
    for b in args.batches:
        for mode in args.modes:
            rec[f"{mode}_b{b}"] = decode_tokens_per_s(model, b, args.prompt, args.tokens, mode == "compile")
        best = max(args.modes, key=lambda mode: rec[f"{mode}_b{b}"])
        rec[f"tok_s_b{b}"], rec[f"best_b{b}"] = rec[f"{best}_b{b}"], best
    rec["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print(f"{name:<12} " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in rec.items() if k != "variant"), flush=True)
    return rec


def main(argv: list[str] | None = None) -> dict:
    """Run FP16 and the gqsa variants; write OUT/decode.json and print a table."""
    ap = argparse.ArgumentParser(prog="gqsa bench decode", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--shape", default="7b", choices=sorted(SHAPES), help="LLaMA-2 layer shapes")
    ap.add_argument("--layers", type=int, default=None, help="decoder blocks (default: the shape's)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.5, 0.2])
    ap.add_argument("--modes", nargs="*", default=["graph", "compile"], choices=["graph", "compile"],
                    help="decode-step settings to try per variant (the best is reported): a CUDA graph of "
                         "the eager step, and the same with torch.compile'd blocks inside")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    require_triton("gqsa bench decode")
    if not torch.cuda.is_available():
        raise SystemExit("gqsa bench decode needs a CUDA GPU")
    os.makedirs(args.out, exist_ok=True)
    result = dict(device=torch.cuda.get_device_name(), date=datetime.datetime.now().isoformat(timespec="seconds"),
                  torch=torch.__version__, config=vars(args), records=[])
    model = random_llama(args.layers, torch.float16, args.seed, args.shape)
    for s in [None] + list(args.sparsities):
        if s is not None:
            compress_randomly(model, s, args.seed)
        result["records"].append(bench_variant(model, "fp16" if s is None else f"gqsa_S{round(s * 100)}", args))
        with open(os.path.join(args.out, "decode.json"), "w") as f:  # after each variant: a cut run keeps it
            json.dump(result, f, indent=1)
    print_decode_table(result)
    return result


if __name__ == "__main__":
    main()
