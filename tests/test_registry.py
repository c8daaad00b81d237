"""The runtime registry: every package under backends/ declares its names; duplicates and
unknown names fail loudly; importing the registry and listing runtimes loads no runtime."""

from __future__ import annotations

import subprocess
import sys

import pytest

from toolchain import backends
from toolchain.backends.base import Backend, Capabilities
from toolchain.errors import InputError

EXPECTED = {"coreml", "executorch", "executorch-coreml", "executorch-ethos-u", "litert", "litert-mediatek",
            "litert-qualcomm", "onnx"}


def test_every_package_registers_its_backends():
    assert set(backends.runtimes()) == EXPECTED
    for name in backends.runtimes():
        b = backends.get(name)
        assert isinstance(b, Backend) and isinstance(b.capabilities, Capabilities)
        assert type(b).__module__.startswith("toolchain.backends.")


def test_a_name_registered_twice_fails():
    backends.runtimes()
    with pytest.raises(RuntimeError, match="registered twice"):
        backends.register("onnx", backends.get("onnx"))


def test_unknown_runtime_names_the_choices():
    with pytest.raises(InputError, match="unknown runtime 'nope'; available: coreml, executorch"):
        backends.get("nope")


def test_listing_runtimes_imports_no_runtime_library():
    code = ("import sys; from toolchain import backends; backends.runtimes(); "
            "print(sorted(m for m in ('torch', 'executorch', 'onnxruntime', 'coremltools', 'ai_edge_litert') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
