"""Count a Triton kernel's SASS instructions by execution pipe, offline (no GPU needed).

Compiles the kernel ahead of time for sm_90 with Triton's bundled ptxas, disassembles it with
cuobjdump and sorts the instructions into the integer/logic ALU pipe and the FMA pipe. On
Hopper an SM issues 64 ALU lanes and 128 FMA lanes per cycle, so for a memory-bound kernel the
question is whether ``ALU/64 + FMA/128`` per value stays well under the bytes-per-cycle budget.
This is how the quantization kernel (issue 6) and the cuDNN dequantization (issue 8) were
tuned between device runs.

    .venv/bin/python benchmarks/sass_pipes.py cudnn-dequant [--dump /tmp/k.sass]

Each target names a kernel, its signature and constexprs; add one to ``TARGETS`` to count
another kernel. The counts are static (one pass through the kernel body), which is what a
tile-per-program kernel executes once per tile.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

ALU = {"LOP3", "SHF", "ISETP", "SEL", "LEA", "IADD3", "FSETP", "PRMT", "VIMNMX", "VIMNMX3",
       "FMNMX", "SGXT", "P2R", "R2P", "PLOP3", "FSEL", "POPC", "FLO", "BMSK", "LOP", "IABS",
       "VIADD", "F2FP", "I2FP"}
FMA = {"FFMA", "FMUL", "FADD", "IMAD", "HMUL2", "HFMA2", "HADD2", "FMNMX3"}
MEM = {"LDG", "STG", "LDS", "STS", "LDC", "ULDC"}


def _cudnn_dequant(nvfp4: bool = True, even: bool = True):
    from fp4_cudnn._triton_kernels import dequant_pair
    from fp4_cudnn.dequant import DEFAULT_CONFIG

    sig = {"qa": "*u8", "sfa": "*u8", "outa": "*u32", "rows_a": "i32", "sfa_col_tiles": "i32",
           "tiles_a": "i32", "qb": "*u8", "sfb": "*u8", "outb": "*u32", "rows_b": "i32",
           "sfb_col_tiles": "i32", "kbytes": "i32", "alpha_ptr": "*fp32"}
    import os
    bpb = 8 if nvfp4 else 16  # packed bytes per scale block
    vb = int(os.environ.get("VB", bpb))
    consts = {"BR": DEFAULT_CONFIG["BR"], "NV": DEFAULT_CONFIG["KBYTES"] // vb, "VB": vb,
              "BPB": bpb, "NVFP4": nvfp4, "A_SF_TILE_ROWS": 128, "ALPHA_A": False, "A_EVEN": even, "B_EVEN": even}
    values = DEFAULT_CONFIG["BR"] * DEFAULT_CONFIG["KBYTES"] * 2
    # Both operands' tile bodies are in the kernel: halve the count to get one tile's.
    return dequant_pair, sig, consts, DEFAULT_CONFIG["num_warps"], values, 2


TARGETS = {
    "cudnn-dequant": lambda: _cudnn_dequant(True),
    "cudnn-dequant-mx": lambda: _cudnn_dequant(False),
    "cudnn-dequant-masked": lambda: _cudnn_dequant(True, even=False),
}


def sass_of(fn, signature: dict, constexprs: dict, num_warps: int) -> str:
    """SASS text of ``fn`` compiled for sm_90 (pointer arguments assumed 16-byte aligned)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    aligned = [[i] for i, (k, v) in enumerate(signature.items()) if v.startswith("*") or k.endswith("bytes")]
    src = ASTSource(fn, sig, constexprs, attrs={tuple(a): [["tt.divisibility", 16]] for a in aligned})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([str(bindir / "cuobjdump"), "-sass", f.name], check=True,
                              capture_output=True, text=True).stdout


def count(sass: str) -> Counter:
    """Opcode (without modifiers or predicates) -> static count."""
    ins = [re.sub(r"^@!?U?P\w+\s+", "", i) for i in re.findall(r"/\*[0-9a-f]{4}\*/\s+([^;]+);", sass)]
    return Counter(i.split()[0].split(".")[0] for i in ins)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=sorted(TARGETS))
    ap.add_argument("--dump", help="also write the SASS here")
    args = ap.parse_args()
    fn, sig, consts, warps, values_per_tile, bodies = TARGETS[args.target]()
    sass = sass_of(fn, sig, consts, warps)
    if args.dump:
        Path(args.dump).write_text(sass)
    ops = count(sass)
    threads = 32 * warps
    per_value = lambda names: sum(v for k, v in ops.items() if k in names) * threads / bodies / values_per_tile
    alu, fma, mem = per_value(ALU), per_value(FMA), per_value(MEM)
    other = sum(v for k, v in ops.items() if k not in ALU | FMA | MEM) * threads / bodies / values_per_tile
    print(f"{args.target}: per value  ALU {alu:.2f}  FMA {fma:.2f}  memory {mem:.3f}  other {other:.2f}"
          f"  -> SM cycles per value {alu / 64 + fma / 128:.3f}")
    print("top opcodes:", ", ".join(f"{k} {v}" for k, v in ops.most_common(14)))


if __name__ == "__main__":
    main()
