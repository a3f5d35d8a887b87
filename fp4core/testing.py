"""Helpers a backend author imports to test a plugin the way fp4core tests its own.

    from fp4core.testing import check_backend, registered

    with registered(MyBackend()):
        check_backend("mine", fp4core.make_problem(7, 256, 128))

``check_backend`` runs every tactic on fresh random operands into a NaN-poisoned output and
compares with the exact reference (relative error <= 1e-2), through the backend's own
``prepare`` when it has one, and through ``mm_fp4`` with the backend named.
``device_allocations`` counts the CUDA allocations a block makes (a repeated call or a
CUDA-graph replay must make none). ``check_back_to_back`` runs dependent launches eagerly
without programmatic dependent launch and in a CUDA graph with it, and wants the same bits
(a kernel that touches its inputs, output or workspace before ``pdl_wait`` fails it).
``global_access_before_pdl_wait`` reads a PTX text (``fp4core.kit.jit.build(..., kind="ptx")``,
no GPU needed) for the global-memory instructions each kernel issues before its first
``griddepcontrol.wait``. ``guarded_copy`` puts a CPU tensor right before an unreadable page, so a Triton kernel run in
the interpreter (``TRITON_INTERPRET=1``) that reads or writes past the tensor's end dies with
SIGSEGV instead of passing by luck.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import mmap
import re
from typing import Any, Callable, Iterator, Sequence

import torch

from fp4core.dispatch.selector import selector
from fp4core.dispatch.hooks import REGIMES, BackendInfo, Tactic
from fp4core.dispatch.problem import Operands, Problem
from fp4core.formats.reference import TOLERANCE, reference_mm, relative_error
from fp4core.dispatch.synthetic import random_operands
from fp4core.dispatch.tuner import prepared_sets, tactic_label
from fp4core.kit import pdl


_guarded_maps: list = []  # the mappings behind guarded_copy's tensors live as long as the process


def guarded_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``t`` (same shape and dtype) whose last byte is followed by a
    page with no access rights (Linux/POSIX mmap + mprotect): any access past its end is a
    segmentation fault. Its start is 16-byte aligned when ``t``'s size in bytes is a multiple
    of 16. The memory is never unmapped (test processes only)."""
    src = t.detach().cpu().contiguous()
    nbytes = src.numel() * src.element_size()
    page = mmap.PAGESIZE
    total = (-(-nbytes // page) + 1) * page
    buf = mmap.mmap(-1, total, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mprotect(ctypes.c_void_p(base + total - page), ctypes.c_size_t(page), 0) != 0:
        raise OSError(ctypes.get_errno(), "guarded_copy: mprotect failed")
    _guarded_maps.append(buf)
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=total - page - nbytes)
    out = raw.view(src.dtype).view(src.shape)
    out.copy_(src)
    return out


@contextlib.contextmanager
def registered(plugin: Any) -> Iterator[Any]:
    """Register ``plugin`` for the duration of the block; yields the loaded Backend."""
    backend = selector.registry.register(plugin, origin="registered by fp4core.testing")
    try:
        yield backend
    finally:
        selector.registry.unregister(backend.name)


def first_in_auto(name: str, version: str = "1", **fields: Any) -> BackendInfo:
    """A ``BackendInfo`` for a test backend that ``auto`` orders before every installed one, in
    every M regime (priority 99), so the test knows which backend a call reaches. ``fields``:
    any other BackendInfo field."""
    return BackendInfo(name=name, version=version, priority={r: 99 for r in REGIMES}, **fields)


@dataclasses.dataclass
class CheckResult:
    tactic: Tactic
    error: float

    def __str__(self) -> str:
        return f"[{tactic_label(self.tactic)}] relative error {self.error:.3g}"


def check_backend(name: str, problem: Problem, *, seed: int = 0, tactics: list[Tactic] | None = None,
                  tolerance: float = TOLERANCE) -> list[CheckResult]:
    """Check every tactic of backend ``name`` on ``problem`` against the exact reference.

    Fresh random operands (seeded by ``seed``) on the problem's device; the output is
    filled with NaN before each run so unwritten elements fail. Raises AssertionError with
    every failing tactic; returns the per-tactic errors.
    """
    backend = selector.registry.get(name)
    if backend is None:
        raise AssertionError(f"backend {name!r} is not registered")
    answer = backend.supports(problem)
    if not answer:
        raise AssertionError(f"backend {name!r} does not support {problem.describe()}: {answer.reason}")
    device = f"cuda:{problem.device.index}" if problem.device.is_cuda else "cpu"
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    ops = random_operands(problem, device=device, generator=gen)
    ref = reference_mm(problem, ops, torch.float64)
    run_ops = prepared_sets(backend, problem, [ops])[0] if problem.prepared else ops
    results, failures = [], []
    for tactic in (tactics if tactics is not None else backend.tactics(problem)):
        out = torch.full((problem.m, problem.n), float("nan"), dtype=problem.out_dtype, device=device)
        backend.run(problem, run_ops, tactic, out)
        err = relative_error(out, ref)
        results.append(CheckResult(tactic, err))
        if not err <= tolerance:
            failures.append(f"{name}[{tactic_label(tactic)}] on {problem.describe()}: "
                            f"relative error {err:.3g} > {tolerance:g}")
    if failures:
        raise AssertionError("\n".join(failures))
    return results


def quantize_weight(w: torch.Tensor, use_nvfp4: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A float (N, K) weight -> (b uint8 (N, K/2), b_sf 128x4 scale bytes, alpha) as a
    checkpoint holds it: NVFP4 with its global scale (alpha = 1 / global scale, float32 of one
    element) or MXFP4 (alpha None). What weight-only tests hand to ``mm_bf16_fp4``."""
    from fp4core.formats.quantize import compute_global_scale, mxfp4_quantize, nvfp4_quantize
    if use_nvfp4:
        gw = compute_global_scale(w)
        b, bsf = nvfp4_quantize(w, gw)
        return b, bsf, (1.0 / gw).reshape(1).float()
    b, bsf = mxfp4_quantize(w)
    return b, bsf, None


def canonical_operands(problem: Problem, seed: int = 0) -> Operands:
    """Fresh random canonical operands for ``problem`` on its device."""
    device = f"cuda:{problem.device.index}" if problem.device.is_cuda else "cpu"
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return random_operands(problem, device=device, generator=gen)


def run_repeatedly(backend: Any, problem: Problem, operands: Operands, tactic: Tactic,
                   times: int = 2) -> list[torch.Tensor]:
    """Run one tactic ``times`` times on the same operands, each into a fresh NaN-filled output.

    For determinism checks: a kernel without races gives bitwise the same output every time,
    and the NaN fill shows elements it never wrote. Synchronises the device before returning.

    Args:
        backend: a backend object with ``run(problem, operands, tactic, out)``.
        problem: the problem the operands were made for.
        operands: canonical operands, or the backend's prepared ones.
        tactic: one of the backend's tactics.
        times: how many runs.

    Returns:
        ``times`` output tensors of shape (problem.m, problem.n) and dtype problem.out_dtype,
        on the problem's device.
    """
    device = f"cuda:{problem.device.index}" if problem.device.is_cuda else "cpu"
    outs = []
    for _ in range(times):
        out = torch.full((problem.m, problem.n), float("nan"), dtype=problem.out_dtype, device=device)
        backend.run(problem, operands, tactic, out)
        outs.append(out)
    if problem.device.is_cuda:
        torch.cuda.synchronize()
    return outs


@dataclasses.dataclass
class DeviceAllocations:
    """What the CUDA caching allocator did inside a ``device_allocations()`` block.

    ``allocations``: allocation requests made; ``requested_bytes``: the bytes they asked for;
    ``peak_growth``: how far the peak of allocated bytes rose above the level at the block's
    start (0 when nothing was live at once beyond what already was).
    """

    allocations: int = 0
    requested_bytes: int = 0
    peak_growth: int = 0


@contextlib.contextmanager
def device_allocations(device: torch.device | int | None = None) -> Iterator[DeviceAllocations]:
    """Count the CUDA allocations made inside the block (filled in when the block exits).

    Counts requests, not the memory level: ``torch.cuda.memory_allocated()`` before and
    after can differ without any allocation, for instance when Python's cyclic GC frees an
    older tensor, or when the allocator retires a block that was freed while in use on
    another stream (it does so at its next allocation). A CUDA-graph replay or a call into
    preallocated buffers must give ``allocations == 0``; an eager call that returns a fresh
    output gives one allocation of the output's size. Synchronises the device at entry and
    exit and resets its peak-memory statistics at entry.
    """
    torch.cuda.synchronize(device)
    stats_before = torch.cuda.memory_stats(device)
    torch.cuda.reset_peak_memory_stats(device)
    level = torch.cuda.memory_allocated(device)
    counts = DeviceAllocations()
    yield counts
    torch.cuda.synchronize(device)
    stats_after = torch.cuda.memory_stats(device)
    for field, key in (("allocations", "allocation.all.allocated"),
                       ("requested_bytes", "requested_bytes.all.allocated")):
        if key not in stats_after or key not in stats_before:
            raise RuntimeError(f"device_allocations: torch.cuda.memory_stats() has no {key!r} "
                               f"(torch {torch.__version__}); this check needs torch >= 2.1")
        setattr(counts, field, int(stats_after[key]) - int(stats_before[key]))
    counts.peak_growth = int(torch.cuda.max_memory_allocated(device)) - int(level)


def check_back_to_back(calls: Sequence[Callable[[], Any]], outputs: Sequence[torch.Tensor],
                       label: str = "") -> None:
    """Launch ``calls`` back to back, where a call may read what an earlier one wrote (its
    activations, a shared workspace, the same output), three ways: eagerly with programmatic
    dependent launch off (the expected bits), eagerly with it on, and captured in one CUDA
    graph with it on, then replayed. Every tensor of ``outputs`` is NaN-poisoned before each
    way, and must come out bit-identical to the expected. A kernel launched with PDL that
    reads its inputs or workspace, or writes its output, before waiting for the kernel ahead
    of it (``pdl_wait`` in ``fp4core/pdl.cuh``) races and fails this (not every time: run it on
    several tactics and shapes). Needs CUDA; the calls must be capturable and already warmed
    up (built, workspaces grown).

    Args:
        calls: functions that each launch one GEMM (or any kernels) on the current stream.
        outputs: the tensors the calls write (float dtypes; compared as raw bits).
        label: named in the assertion message.
    Raises:
        AssertionError naming the output, the way and ``label`` on any differing bit.
    """
    def run_all() -> list[torch.Tensor]:
        for o in outputs:
            o.fill_(float("nan"))
        for c in calls:
            c()
        torch.cuda.synchronize()
        return [o.clone() for o in outputs]

    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)

    with pdl.override(False):
        want = run_all()
    with pdl.override(True):
        got = {"eager with PDL": run_all()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.cuda.graph(graph):
            for c in calls:
                c()
        torch.cuda.current_stream().wait_stream(side)
        for o in outputs:
            o.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        got["graph replay with PDL"] = [o.clone() for o in outputs]
        del graph
    for way, outs in got.items():
        for i, (w, g) in enumerate(zip(want, outs)):
            assert torch.equal(bits(w), bits(g)), (
                f"{label}: output {i} differs {way} from the eager run without PDL "
                f"({int((bits(w) != bits(g)).sum())} of {w.numel()} elements)")


# Global-memory instructions of PTX: loads, stores, atomics and reductions, and (unless only
# plain accesses are asked for) copies into shared memory (cp.async, bulk and tensor copies).
# A prefetch.global.L2 returns no data and is not one.
_PTX_PLAIN = r"ld\.global|st\.global|atom\.global|red\.global|ld\.volatile\.global"
_PTX_ACCESS = {False: re.compile(rf"^\s*(?:@!?%p\d+\s+)?(?:{_PTX_PLAIN}|cp\.async)"),
               True: re.compile(rf"^\s*(?:@!?%p\d+\s+)?(?:{_PTX_PLAIN})")}


def global_access_before_pdl_wait(ptx: str, plain_only: bool = False) -> dict[str, list[str] | None]:
    """For each kernel (``.entry``) of a PTX text: its global-memory instructions that come
    before its first ``griddepcontrol.wait`` in program order, or None if it has no wait.

    Under programmatic dependent launch a kernel may start while the kernel ahead still runs,
    so a kernel that must not touch memory before the wait should map to an empty list.
    ``plain_only``: count loads, stores and atomics only, not copies into shared memory (for a
    kernel allowed to start its weight's bulk copies early). Program order is what the source
    says for straight-line prologues; a wait in one branch does not cover another branch
    placed after it in the text.
    """
    bodies: dict[str, list[str]] = {}
    name = None
    for line in ptx.splitlines():
        m = re.match(r"^(?:\.visible\s+)?\.entry (\S+)\(", line)
        if m:
            name = m.group(1)
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    access = _PTX_ACCESS[plain_only]
    out: dict[str, list[str] | None] = {}
    for name, body in bodies.items():
        wait = next((i for i, line in enumerate(body) if "griddepcontrol.wait" in line), None)
        out[name] = None if wait is None else [line.strip() for line in body[:wait] if access.match(line)]
    return out
