"""Launching a Triton kernel again without Triton's per-call Python work.

``kernel[grid](...)`` binds the arguments, computes their specialization (dtype, 16-byte
alignment of pointers, divisibility of integers by 16, integers equal to 1) and looks the
compiled kernel up on every call: about 40 us per launch of a 20-argument kernel on the
H200 machine's host CPU, which was most of an eager decode layer's host time. ``FastKernel``
keeps the compiled kernels it has seen under a key that is at least as fine as Triton's
specialization, and launches a cached one through its launcher directly. The first call with
a new key goes through ``kernel[grid]`` (compiling if needed) and records the result.

Under Triton's interpreter (``TRITON_INTERPRET=1``) there is no compiled kernel, and every
call goes through ``kernel[grid]``.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from triton import knobs as _knobs
except ImportError:  # the interpreter-only tests import this module without Triton's knobs
    _knobs = None


def _arg_key(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return (v.dtype, v.data_ptr() % 16 == 0)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return (v == 1, v % 16 == 0, -(1 << 31) <= v < (1 << 31))
    return type(v)


def _hooked() -> bool:
    """Whether a Triton launch hook is installed (Triton 3.6 keeps them in HookChain objects
    that are never None; older versions use None for none)."""
    if _knobs is None:
        return False
    runtime = _knobs.runtime
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and (getattr(hook, "calls", True)):
            return True
    return False


class FastKernel:
    """A Triton ``@jit`` function with a cache of its compiled specializations.

    Call as ``fast(grid, *args, **constexprs)``: ``args`` are the runtime arguments in the
    kernel's order (tensors or ints), ``constexprs`` the ``tl.constexpr`` parameters, which
    follow all runtime parameters in the signature, plus launch options (num_warps).
    """

    def __init__(self, fn):
        self.fn = fn
        self._compiled: dict[tuple, Any] = {}
        self._fast = hasattr(fn, "device_caches")  # False under the interpreter
        params = getattr(fn, "params", [])
        self._constexprs = [p.name for p in params if p.is_constexpr]
        order = [p.is_constexpr for p in params]
        if order != sorted(order):
            raise TypeError(f"FastKernel({getattr(fn, '__name__', fn)}): constexpr parameters must come last")

    def _key(self, device: int, args: tuple, constexprs: dict) -> tuple:
        return (device, tuple(_arg_key(a) for a in args), tuple(constexprs.items()))

    def compiled(self, args: tuple, constexprs: dict) -> "CompiledLaunch | None":
        """The compiled kernel these arguments (tensors as tensors) select, made launchable
        with plain integers for pointers; None until a call with such arguments compiled it
        (or under the interpreter). For callers that launch one specialization many times
        (``fp4core.formats.kernels.quantize_triton.ActivationQuantizer``)."""
        if not self._fast:
            return None
        kernel = self._compiled.get(self._key(torch.cuda.current_device(), args, constexprs))
        if kernel is None:
            return None
        return CompiledLaunch(kernel, tuple(constexprs[name] for name in self._constexprs))

    def __call__(self, grid: tuple[int, ...], *args: Any, **constexprs: Any) -> None:
        if not self._fast:
            self.fn[grid](*args, **constexprs)
            return
        device = torch.cuda.current_device()
        key = self._key(device, args, constexprs)
        kernel = self._compiled.get(key)
        if kernel is None:
            kernel = self.fn[grid](*args, **constexprs)
            if kernel is not None and hasattr(kernel, "packed_metadata"):
                self._compiled[key] = kernel
            return
        if _hooked():  # a profiler's launch hook wants Triton's own path
            self.fn[grid](*args, **constexprs)
            return
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        stream = torch._C._cuda_getCurrentRawStream(device)
        params = [constexprs[name] for name in self._constexprs]
        kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None,
                   *args, *params)



class CompiledLaunch:
    """One compiled specialization of a FastKernel, launched with integer pointers.

    Triton's launcher takes a Python int for a pointer argument as the address itself; a
    tensor costs a ``data_ptr`` call and a ``cuPointerGetAttribute`` query per argument. The
    caller guarantees that the arguments match the specialization (dtypes, 16-byte alignment,
    the integers' divisibility), as ``FastKernel.compiled`` selected it.
    """

    __slots__ = ("kernel", "params")

    def __init__(self, kernel: Any, params: tuple):
        self.kernel, self.params = kernel, params

    def __call__(self, grid0: int, stream: int, *args: Any) -> None:
        k = self.kernel
        k.run(grid0, 1, 1, stream, k.function, k.packed_metadata, None, None, None, *args, *self.params)
