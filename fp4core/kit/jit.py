"""JIT-compile CUDA C++ with nvcc into shared libraries with C entry points, loaded by ctypes.

A plugin keeps its kernels as ``.cu`` files with ``extern "C"`` host functions that take raw
device pointers, sizes and a ``cudaStream_t``; ``load`` compiles them once and returns a
``ctypes.CDLL``. Nothing here depends on torch's C++ ABI, so a library built with one torch
works with any other.

    lib = fp4core.kit.jit.load("my_kernels", [Path(__file__).parent / "kernels.cu"], arch="sm_90a")
    lib.my_launch.restype = ctypes.c_int
    lib.my_launch(ctypes.c_void_p(x.data_ptr()), ctypes.c_int(n), ctypes.c_void_p(stream))

Every build has ``KIT_INCLUDE`` on its include path: the core's headers for kernels, e.g.
``#include "fp4core/pdl.cuh"`` (programmatic dependent launch, see ``fp4core.kit.pdl``).

Cache: one folder per build under ``$FP4CORE_JIT_CACHE`` (default ``~/.cache/fp4core/jit``),
named by a hash of the source contents (and of the headers beside them), flags, include
folders (the names and sizes of their files, not their location, so a cache built on one
machine is reused on another with the same headers), architectures, output kind and nvcc's version, so an edit or a new compiler rebuilds
and anything else is a cache hit. Two processes building the same library at once are safe:
the builder holds an ``fcntl`` lock and moves the result into place with an atomic rename;
the other waits for the lock and then finds the result.

Environment:
    FP4CORE_JIT_CACHE   cache folder.
    FP4CORE_NVCC        the nvcc to use (else $CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda/bin).
    FP4CORE_CUTLASS_INCLUDE   CUTLASS/CuTe include folder (else the nvidia-cutlass wheel's).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

ENV_CACHE = "FP4CORE_JIT_CACHE"
ENV_NVCC = "FP4CORE_NVCC"
ENV_CUTLASS = "FP4CORE_CUTLASS_INCLUDE"

#: Output kinds: a shared library (ctypes-loadable), a relocatable object, PTX or a cubin.
KINDS = {"shared": ".so", "object": ".o", "ptx": ".ptx", "cubin": ".cubin"}

# Bumped when the way a build is made changes, so old cache entries are not reused.
_RECIPE = "2"  # 2: KIT_INCLUDE on the path and in the key
_HEADER_SUFFIXES = (".h", ".cuh", ".hpp", ".inl")
#: The core's own headers (``#include "fp4core/pdl.cuh"``): on every build's include path, and
#: hashed by content into every build key (they are few and small, and edited with the core).
KIT_INCLUDE = Path(__file__).parent / "include"
_loaded: dict[Path, ctypes.CDLL] = {}
_load_lock = threading.Lock()


class JitError(RuntimeError):
    """Base class of the errors this module raises."""


class NvccNotFoundError(JitError):
    """No nvcc could be found; the message says where we looked and how to fix it."""


class CompileError(JitError):
    """nvcc failed. ``command`` is the command line, ``stderr`` the compiler's output."""

    def __init__(self, message: str, command: Sequence[str] = (), stderr: str = ""):
        super().__init__(message)
        self.command = list(command)
        self.stderr = stderr


def cache_dir() -> Path:
    """The cache folder: ``$FP4CORE_JIT_CACHE`` or ``~/.cache/fp4core/jit`` (not created here)."""
    env = os.environ.get(ENV_CACHE, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fp4core" / "jit"


def nvcc_path() -> Path | None:
    """The nvcc executable to use, or None when there is none.

    Order: ``$FP4CORE_NVCC`` (used as given, even if it does not exist, so that a wrong
    setting is reported rather than silently replaced), ``$CUDA_HOME/bin/nvcc``,
    ``$CUDA_PATH/bin/nvcc``, ``nvcc`` on PATH, ``/usr/local/cuda/bin/nvcc``.
    """
    env = os.environ.get(ENV_NVCC, "").strip()
    if env:
        p = Path(env).expanduser()
        return p if p.is_file() and os.access(p, os.X_OK) else None
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var, "").strip()
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    default = Path("/usr/local/cuda/bin/nvcc")
    return default if default.is_file() else None


def _require_nvcc(nvcc: str | Path | None = None) -> Path:
    if nvcc is not None:
        p = Path(nvcc)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise NvccNotFoundError(
            f"nvcc (the CUDA compiler) was not found at {p}. Pass the path of an existing nvcc, "
            f"or leave it out to search ${ENV_NVCC}, $CUDA_HOME/bin, PATH and /usr/local/cuda/bin.")
    p = nvcc_path()
    if p is not None:
        return p
    env = os.environ.get(ENV_NVCC, "").strip()
    where = (f"${ENV_NVCC}={env} is not an executable file" if env else
             f"looked at ${ENV_NVCC}, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH and /usr/local/cuda/bin")
    raise NvccNotFoundError(
        f"nvcc (the CUDA compiler) was not found: {where}. These kernels are compiled on first "
        f"use, so a CUDA toolkit with nvcc (12.x or 13.x) is needed: install one, then put its "
        f"bin folder on PATH or set CUDA_HOME (or {ENV_NVCC}) to it.")


@functools.lru_cache(maxsize=None)
def _nvcc_version_of(path: str) -> str:
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise NvccNotFoundError(f"could not run {path} --version: {exc}") from None
    m = re.search(r"release [\d.]+, V([\d.]+)", res.stdout)
    if res.returncode != 0 or not m:
        raise NvccNotFoundError(f"{path} --version did not report a version "
                                f"(exit {res.returncode}): {res.stdout}{res.stderr}")
    return m.group(1)


def nvcc_version(nvcc: str | Path | None = None) -> str:
    """nvcc's full version, e.g. "13.0.88". Raises NvccNotFoundError without nvcc."""
    return _nvcc_version_of(str(_require_nvcc(nvcc)))


def cutlass_include_dir() -> Path | None:
    """CUTLASS/CuTe headers: ``$FP4CORE_CUTLASS_INCLUDE``, else the include folder inside the
    installed ``nvidia-cutlass`` wheel (``cutlass_library/source/include``); None if neither.

    The folder returned holds ``cutlass/cutlass.h`` and ``cute/tensor.hpp``. Nothing is
    downloaded; ``pip install nvidia-cutlass`` provides it.
    """
    env = os.environ.get(ENV_CUTLASS, "").strip()
    candidates = [Path(env).expanduser()] if env else []
    try:
        spec = importlib.util.find_spec("cutlass_library")  # locates without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "source" / "include")
    for c in candidates:
        if (c / "cutlass" / "cutlass.h").is_file():
            return c
    return None


def normalize_arch(arch: str) -> str:
    """"sm_90a", "90a", "compute_90a" or "sm90a" -> "90a" (the number and suffix)."""
    m = re.fullmatch(r"(?:sm_?|compute_?)?(\d+[a-z]?)", arch.strip())
    if not m:
        raise ValueError(f"arch: expected something like 'sm_90a' or '100a', got {arch!r}")
    return m.group(1)


def gencode_flags(arch: str | Sequence[str]) -> list[str]:
    """nvcc flags for real machine code of each architecture, in the explicit ``-gencode``
    form (``-arch=sm_90a`` misbehaves with nvcc 13.0: it also runs a plain sm_90 pass).

    The first architecture also embeds its PTX, so a newer GPU of the same family can JIT it.
    """
    archs = [arch] if isinstance(arch, str) else list(arch)
    if not archs:
        raise ValueError("arch: at least one architecture is needed")
    flags = []
    for i, a in enumerate(archs):
        n = normalize_arch(a)
        code = f"sm_{n},compute_{n}" if i == 0 else f"sm_{n}"
        flags.append(f"-gencode=arch=compute_{n},code=[{code}]")
    return flags


def _sidecar_headers(sources: Sequence[Path]) -> list[Path]:
    """Headers in the sources' folders: cheap to hash and the usual thing one edits."""
    found: set[Path] = set()
    for s in sources:
        for p in s.parent.iterdir():
            if p.suffix in _HEADER_SUFFIXES and p.is_file():
                found.add(p)
    return sorted(found)


def _kit_headers() -> list[Path]:
    return sorted(p for p in KIT_INCLUDE.rglob("*") if p.suffix in _HEADER_SUFFIXES and p.is_file())


@functools.lru_cache(maxsize=None)
def _include_fingerprint(include_dir: str) -> str:
    """What an include folder contributes to a build key: its headers' relative paths and
    sizes, not its location, so a cache built here is a hit where the same headers (say,
    the same nvidia-cutlass wheel) are installed elsewhere, and a different version misses."""
    root = Path(include_dir)
    if not root.is_dir():
        return f"missing:{include_dir}"
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            h.update(f"{path.relative_to(root)}:{path.stat().st_size}\0".encode())
    return h.hexdigest()


def build_key(name: str, sources: Sequence[Path], arch: str | Sequence[str], flags: Sequence[str],
              include_dirs: Sequence[Path], kind: str, nvcc_ver: str) -> str:
    """The hex digest naming a build in the cache (see the module docstring)."""
    h = hashlib.sha256()
    archs = [arch] if isinstance(arch, str) else list(arch)
    for part in (_RECIPE, name, kind, nvcc_ver, "|".join(normalize_arch(a) for a in archs),
                 "\0".join(flags), "\0".join(_include_fingerprint(str(d)) for d in include_dirs)):
        h.update(part.encode())
        h.update(b"\0")
    for p in list(sources) + _sidecar_headers(sources) + _kit_headers():
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _command(nvcc: Path, sources: Sequence[Path], out: Path, arch, flags, include_dirs, kind) -> list[str]:
    cmd = [str(nvcc), "-std=c++17", "-O3", *gencode_flags(arch)]
    if kind == "shared":
        cmd += ["-shared", "-Xcompiler", "-fPIC", "-cudart", "static"]
    elif kind == "object":
        cmd += ["-c", "-Xcompiler", "-fPIC"]
    elif kind == "ptx":
        cmd += ["-ptx"]
    else:
        cmd += ["-cubin"]
    for d in [KIT_INCLUDE, *include_dirs]:
        cmd += ["-I", str(d)]
    cmd += list(flags)
    cmd += ["-o", str(out)] + [str(s) for s in sources]
    return cmd


def _say(progress: bool, text: str, end: str = "\n") -> None:
    if progress:
        print(text, end=end, file=sys.stderr, flush=True)


def build(name: str, sources: Sequence[str | Path], *, arch: str | Sequence[str] = "sm_90a",
          flags: Iterable[str] = (), include_dirs: Iterable[str | Path] = (), progress: bool = True,
          kind: str = "shared", nvcc: str | Path | None = None) -> Path:
    """Compile ``sources`` with nvcc (or find the cached result) and return the output's path.

    Args:
        name: a short identifier ([A-Za-z0-9_.-]) used in file names and messages.
        sources: ``.cu`` / ``.cpp`` files, compiled and linked together.
        arch: one architecture ("sm_90a", "sm_100a", "sm_80"...) or several; each gets
            ``-gencode=arch=compute_X,code=sm_X``.
        flags: extra nvcc flags (``-DNAME=1``, ``-lineinfo``, ``-Xptxas=-v``...).
        include_dirs: extra ``-I`` folders (e.g. ``cutlass_include_dir()``); the core's
            ``KIT_INCLUDE`` (``fp4core/pdl.cuh``) is always on the path.
        progress: print "building NAME for ARCH ... done in S s" on stderr while compiling.
        kind: "shared" (a ``.so`` with the CUDA runtime linked statically, for ``load``),
            "object", "ptx" or "cubin" (compile-only checks, e.g. for an architecture this
            machine has no GPU of).
        nvcc: the compiler to use instead of ``nvcc_path()``.
    Returns:
        Path of the built file inside the cache folder.
    Raises:
        NvccNotFoundError when there is no nvcc; CompileError (with nvcc's stderr) when
        compilation fails; FileNotFoundError for a missing source.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"name: use letters, digits, '_', '.', '-' only, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    srcs = [Path(s).resolve() for s in sources]
    if not srcs:
        raise ValueError("sources: at least one source file is needed")
    for s in srcs:
        if not s.is_file():
            raise FileNotFoundError(f"CUDA source not found: {s}")
    flag_list = [str(f) for f in flags]
    incs = [Path(d).resolve() for d in include_dirs]
    nvcc_exe = _require_nvcc(nvcc)
    ver = _nvcc_version_of(str(nvcc_exe))
    key = build_key(name, srcs, arch, flag_list, incs, kind, ver)
    root = cache_dir()
    entry = root / f"{name}-{key[:20]}"
    target = entry / f"{'lib' if kind == 'shared' else ''}{name}{KINDS[kind]}"
    if target.is_file():
        return target
    entry.mkdir(parents=True, exist_ok=True)
    arch_label = arch if isinstance(arch, str) else "+".join(arch)
    with open(entry / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(progress, f"fp4core.kit.jit: waiting for another process building {name} for {arch_label}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.is_file():  # the other process finished it while we waited
                return target
            tmpdir = Path(tempfile.mkdtemp(prefix=".build-", dir=entry))
            try:
                tmp_out = tmpdir / target.name
                cmd = _command(nvcc_exe, srcs, tmp_out, arch, flag_list, incs, kind)
                _say(progress, f"fp4core.kit.jit: building {name} for {arch_label} ...", end=" ")
                t0 = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmpdir)
                if res.returncode != 0 or not tmp_out.is_file():
                    _say(progress, "failed")
                    err = (res.stderr or "") + (res.stdout or "")
                    shown = err if len(err) <= 20000 else "...\n" + err[-20000:]
                    raise CompileError(
                        f"nvcc failed to build {name} for {arch_label} (exit {res.returncode}).\n"
                        f"command: {' '.join(cmd)}\ncompiler output:\n{shown}", cmd, err)
                os.replace(tmp_out, target)  # atomic: readers see all of it or nothing
                _say(progress, f"done in {time.perf_counter() - t0:.1f} s")
                (entry / "command.txt").write_text(" ".join(cmd) + "\n")
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def load(name: str, sources: Sequence[str | Path], **kwargs) -> ctypes.CDLL:
    """``build`` a shared library (same arguments, ``kind`` must stay "shared") and load it.

    The library is loaded once per process and path (later calls return the same CDLL).
    Declare ``restype`` / ``argtypes`` of its functions before calling them.
    """
    if kwargs.get("kind", "shared") != "shared":
        raise ValueError("load: only kind='shared' builds can be loaded")
    path = build(name, sources, **kwargs)
    with _load_lock:
        lib = _loaded.get(path)
        if lib is None:
            lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0) | os.RTLD_NOW)
            _loaded[path] = lib
        return lib
