"""Blackwell (SM100a, SM120a): CUTLASS's block-scaled FP4 GEMMs, compile-only here.

``csrc/blockscaled_sm100.cu`` and ``csrc/blockscaled_sm120.cu`` instantiate CUTLASS 4.x
``GemmUniversal`` kernels built by the collective builders for ``OpClassBlockScaledTensorOp``
with ``nv_float4_t`` / ``mx_float4_t`` operands (128x4 scale-factor layouts), for a few tile
shapes. They are compiled (``build``) so CI catches API drift, but no GPU of those families
is available to us, so the backend does not run them: ``supports`` says why.
"""

from __future__ import annotations

from pathlib import Path

from fp4core.kit import jit

from .launcher import CSRC, include_dirs

#: architecture -> source file.
SOURCES = {"100a": CSRC / "blockscaled_sm100.cu", "120a": CSRC / "blockscaled_sm120.cu"}
ARCHS = tuple(SOURCES)
#: Flags CUTLASS's SM100/SM120 kernels expect.
FLAGS = ("--expt-relaxed-constexpr", "-DNDEBUG")

NOT_VERIFIED = ("sm_{sm}: the CUTLASS block-scaled FP4 kernels for Blackwell are compiled but not "
                "verified on hardware, so this backend does not run them")


def build(arch: str, progress: bool = True) -> list[Path]:
    """Compile the block-scaled instantiations for ``arch`` ("100a" / "sm_100a" / "120a") to a
    relocatable object (compile-only: nothing here can run them). Returns the artifact paths."""
    n = jit.normalize_arch(arch)
    if n not in SOURCES:
        raise ValueError(f"arch: the Blackwell instantiations exist for {', '.join('sm_' + a for a in ARCHS)}, "
                         f"got {arch!r}")
    incs = include_dirs()
    util = incs[0].parent / "tools" / "util" / "include"  # cutlass/util/packed_stride.hpp
    if (util / "cutlass" / "util" / "packed_stride.hpp").is_file():
        incs.append(util)
    return [jit.build(f"fp4_cutlass_blockscaled_sm{n}", [SOURCES[n]], arch=f"sm_{n}", flags=FLAGS,
                      include_dirs=incs, progress=progress, kind="object")]
