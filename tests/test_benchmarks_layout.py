"""The benchmark scripts run as `python benchmarks/X.py`, which puts benchmarks/ first on
sys.path: a script named like an installed top-level package shadows it for every library
that imports it. transformers 5.25 imports `kernels` (its hub-kernels integration) as soon
as that distribution is installed, and a `benchmarks/kernels.py` broke `make bench` at the
first T5 import. This checks every script name against what the venv can import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_no_benchmark_script_shadows_an_installed_module(monkeypatch):
    paths = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    monkeypatch.setattr(sys, "path", paths)
    shadowing = []
    for script in sorted(BENCH.glob("*.py")):
        name = script.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(script):
            continue
        if name in sys.builtin_module_names:
            shadowing.append(name)
            continue
        spec = importlib.util.find_spec(name)
        # a namespace package (origin None) is only a directory of this repo seen from the cwd
        if spec is not None and spec.origin is not None:
            shadowing.append(name)
    assert not shadowing, f"benchmarks/ scripts named like importable modules: {shadowing}"
