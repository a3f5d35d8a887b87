"""fp4core.kit.jit: compile with nvcc, load with ctypes, cache, errors. Needs nvcc, no GPU."""

import ctypes
import multiprocessing
import os
from pathlib import Path

import pytest

from fp4core.kit import jit

needs_nvcc = pytest.mark.skipif(jit.nvcc_path() is None, reason="nvcc not installed")

# An extern "C" host function that needs no GPU, plus a kernel so nvcc really compiles device code.
SOURCE = r"""
#include <cuda_runtime.h>
__global__ void scale_kernel(float* x, float s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}
extern "C" int fp4core_jit_test_add(int a, int b) { return a + b + OFFSET; }
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "jit-cache"
    monkeypatch.setenv(jit.ENV_CACHE, str(d))
    return d


def _write(tmp_path: Path, text: str, name: str = "t.cu") -> Path:
    p = tmp_path / "src" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(text)
    return p


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(jit.ENV_CACHE, str(tmp_path / "x"))
    assert jit.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(jit.ENV_CACHE)
    assert jit.cache_dir() == Path.home() / ".cache" / "fp4core" / "jit"


def test_gencode_flags():
    assert jit.gencode_flags("sm_90a") == ["-gencode=arch=compute_90a,code=[sm_90a,compute_90a]"]
    assert jit.gencode_flags(["90a", "sm_100a"])[1] == "-gencode=arch=compute_100a,code=[sm_100a]"
    with pytest.raises(ValueError, match="arch"):
        jit.gencode_flags("hopper")


@needs_nvcc
def test_nvcc_version():
    assert jit.nvcc_version().count(".") >= 1


@needs_nvcc
def test_build_load_call_and_cache_hit(tmp_path, cache, capsys):
    src = _write(tmp_path, SOURCE)
    lib = jit.load("addtest", [src], arch="sm_90a", flags=["-DOFFSET=100"])
    lib.fp4core_jit_test_add.restype = ctypes.c_int
    assert lib.fp4core_jit_test_add(2, 3) == 105
    err = capsys.readouterr().err
    assert "building addtest for sm_90a" in err and "done in" in err

    path = jit.build("addtest", [src], arch="sm_90a", flags=["-DOFFSET=100"])
    assert path.is_file() and cache in path.parents
    assert capsys.readouterr().err == ""  # second build: cache hit, nothing compiled
    # Different flags or edited source: a different cache entry.
    other = jit.build("addtest", [src], arch="sm_90a", flags=["-DOFFSET=1"], progress=False)
    assert other != path
    src.write_text(SOURCE + "\n// edit\n")
    assert jit.build("addtest", [src], arch="sm_90a", flags=["-DOFFSET=100"], progress=False) != path


@needs_nvcc
def test_header_beside_source_is_part_of_the_key(tmp_path, cache):
    hdr = _write(tmp_path, "#define OFFSET 7\n", "h.cuh")
    src = _write(tmp_path, '#include "h.cuh"\n' + SOURCE)
    first = jit.build("hdrtest", [src], progress=False)
    hdr.write_text("#define OFFSET 8\n")
    assert jit.build("hdrtest", [src], progress=False) != first


@needs_nvcc
def test_compile_error_is_readable(tmp_path, cache):
    src = _write(tmp_path, "extern \"C\" int broken( { return 1; }\n")
    with pytest.raises(jit.CompileError) as info:
        jit.build("broken", [src], progress=False)
    msg = str(info.value)
    assert "nvcc failed to build broken" in msg and "compiler output" in msg
    assert "error" in info.value.stderr
    assert not list(cache.glob("broken-*/*.so"))


@needs_nvcc
def test_compile_only_kinds(tmp_path, cache):
    src = _write(tmp_path, SOURCE.replace("OFFSET", "0"))
    ptx = jit.build("ptxtest", [src], arch="sm_100a", kind="ptx", progress=False)
    assert ".target sm_100a" in ptx.read_text()
    obj = jit.build("objtest", [src], arch="sm_90a", kind="object", progress=False)
    assert obj.stat().st_size > 0


def test_missing_nvcc_gives_clear_error(tmp_path, cache, monkeypatch):
    src = _write(tmp_path, SOURCE)
    monkeypatch.setenv(jit.ENV_NVCC, str(tmp_path / "no-such-nvcc"))
    assert jit.nvcc_path() is None
    with pytest.raises(jit.NvccNotFoundError, match="nvcc .*not found.*CUDA_HOME"):
        jit.build("x", [src])
    with pytest.raises(jit.NvccNotFoundError, match="not found at"):
        jit.build("x", [src], nvcc=tmp_path / "nope")


def test_missing_source(tmp_path, cache):
    with pytest.raises(FileNotFoundError):
        jit.build("x", [tmp_path / "missing.cu"])


def test_cutlass_include_dir_env(tmp_path, monkeypatch):
    (tmp_path / "cutlass").mkdir()
    (tmp_path / "cutlass" / "cutlass.h").write_text("")
    monkeypatch.setenv(jit.ENV_CUTLASS, str(tmp_path))
    assert jit.cutlass_include_dir() == tmp_path


def _build_in_child(args):
    src, cache_path = args
    os.environ[jit.ENV_CACHE] = cache_path
    return str(jit.build("racetest", [src], flags=["-DOFFSET=0"], progress=False))


@needs_nvcc
def test_two_processes_build_at_once(tmp_path, cache):
    src = _write(tmp_path, SOURCE)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.map(_build_in_child, [(str(src), str(cache))] * 2)
    assert paths[0] == paths[1] and Path(paths[0]).is_file()
    lib = ctypes.CDLL(paths[0])
    assert lib.fp4core_jit_test_add(1, 1) == 2


def test_build_key_follows_include_contents_not_location(tmp_path):
    src = tmp_path / "src" / "k.cu"
    src.parent.mkdir()
    src.write_text("__global__ void k() {}\n")
    inc_a, inc_b = tmp_path / "a" / "include", tmp_path / "b" / "include"
    for inc in (inc_a, inc_b):
        (inc / "lib").mkdir(parents=True)
        (inc / "lib" / "x.h").write_text("#define X 1\n")

    def key(inc):
        jit._include_fingerprint.cache_clear()
        return jit.build_key("k", [src], "sm_90a", [], [inc], "shared", "13.0")

    assert key(inc_a) == key(inc_b)  # same headers installed elsewhere: a cache hit
    (inc_b / "lib" / "x.h").write_text("#define X 22\n")
    assert key(inc_a) != key(inc_b)  # other headers: rebuild
