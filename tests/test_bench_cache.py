"""benchmarks/common.py's export cache: an artifact is reused only when this toolchain source made
it from the recipe the benchmark asks for (a benchmark recipe edited in place, e.g. a new
`encoder_attention`, must re-export, or its rows would measure the old program)."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

from toolchain.artifact import open_artifact

# Loaded from its file: benchmarks/ on sys.path would stay there for every later test of this worker.
_spec = importlib.util.spec_from_file_location(
    "bench_common", Path(__file__).resolve().parent.parent / "benchmarks" / "common.py")
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_cache_is_keyed_by_the_recipe(artifact, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(artifact, out)
    recipe = open_artifact(out).recipe
    assert common.fresh_export(out) is not None  # same source: reused when no recipe is asked for
    assert common.fresh_export(out, recipe.to_dict()) is not None
    other = dataclasses.replace(recipe, cross_attention="memory" if recipe.cross_attention == "kv" else "kv")
    assert common.fresh_export(out, other.to_dict()) is None
    assert common.fresh_export(tmp_path / "missing", recipe.to_dict()) is None
