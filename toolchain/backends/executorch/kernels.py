"""edgeseq's own ExecuTorch kernels (csrc/): built on first use with the machine's C++ compiler
against the ExecuTorch wheel's headers and runtime libraries, cached by the digest of their
sources and of that runtime, and loaded into this process (the kernel registry is in
libexecutorch.so, shared with the Python bindings, so programs using the ops then load).

Today one op: ``edgeseq::rel_attention.out`` (arch/rel_attention.py; the recipe's
``encoder_attention: fused``). The native runner links the same sources (runtime/CMakeLists.txt).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from ...errors import InputError

CSRC = Path(__file__).resolve().parent / "csrc"
# What a fused artifact costs where only the SSE2 baseline of the fp32 loops runs (x86 without
# AVX2/FMA; README, Fused encoder attention). AVX2, AVX-512 and NEON get 8-float vector blocks.
SLOW_PATH = ("this CPU has neither AVX512-BF16 nor AVX2+FMA: edgeseq::rel_attention (encoder_attention: "
             "fused) runs its SSE2 fp32 loops; export with encoder_attention: graph here if encode is slow")
SOURCES = ("rel_attention.cpp", "et_kernel.cpp")
HEADERS = ("rel_attention.h",)
LIBRARY = "libedgeseq_kernels.so"


def cache_dir() -> Path:
    """Where built kernels live: $EDGESEQ_KERNEL_CACHE, else the user's cache directory."""
    env = os.environ.get("EDGESEQ_KERNEL_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeseq"
    return base / "kernels"


def compile_command(out: Path) -> list[str]:
    from ...native import executorch_root  # the wheel the native runner builds against too

    et = executorch_root()
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        raise InputError("edgeseq's ExecuTorch kernels (encoder_attention: fused) need a C++ compiler: "
                         "install g++ (make test-deps) or set CXX")
    lib = et / "lib"
    return [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
            # the definitions the wheel's own libraries were built with (share/cmake/executorch-config.cmake)
            "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED", "-DET_USE_THREADPOOL",
            f"-I{et / 'include'}", f"-I{et / 'include/executorch/runtime/core/portable_type/c10'}",
            *[str(CSRC / s) for s in SOURCES], "-o", str(out), f"-L{lib}",
            "-Wl,--no-as-needed", "-lexecutorch", "-lexecutorch_threadpool", f"-Wl,-rpath,{lib}"]


def _digest() -> str:
    from importlib.metadata import version

    h = hashlib.sha256(version("executorch").encode())
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes())
    return h.hexdigest()[:16]


def library_path() -> Path:
    """The built library, compiling it (about 2 s) when this source/runtime pair has none yet.
    Written to a temporary name and renamed, so an interrupted build leaves nothing half-written."""
    out = cache_dir() / _digest() / LIBRARY
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / LIBRARY
        r = subprocess.run(compile_command(part), capture_output=True, text=True)
        if r.returncode != 0:
            first = next((line for line in r.stderr.splitlines() if "error" in line), r.stderr.strip()[:300])
            raise InputError(f"building edgeseq's ExecuTorch kernels failed: {first}")
        os.replace(part, out)
    return out


@cache
def load() -> str:
    """Load the kernels into this process (once); returns the inner loops this CPU gets:
    "avx512-bf16", or fp32 vector blocks "fp32-avx512" / "fp32-avx2" / "fp32-sse2" / "fp32-neon"
    (EDGESEQ_REL_ATTENTION=fp32 keeps an AVX512-BF16 CPU on the fp32 ones)."""
    from .session import runtime_lib

    runtime_lib()  # the bindings first: they bring libexecutorch.so, whose registry the kernels join
    lib = ctypes.CDLL(str(library_path()), mode=ctypes.RTLD_GLOBAL)
    lib.edgeseq_rel_attention_isa.restype = ctypes.c_char_p
    return str(lib.edgeseq_rel_attention_isa().decode())
