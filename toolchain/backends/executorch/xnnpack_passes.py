"""Skip XNNPACK's preprocess passes that have nothing to rewrite in the graph (export time).

XnnpackBackend.preprocess runs a fixed list of 17 passes on every delegated program
(XNNPACKPassManager.transform), and most of them end with ``super().call(graph_module)``: a
full retrace of the program through fake tensors, plus a verifier run, whether or not the pass
changed a node. Six of them only rewrite ops a seq2seq transformer lowered here does not contain
(batch norm, convolution, PReLU, the upsample-bilinear and SDPA source patterns); on a
t5-small-sized int8 export their retraces were ~11% of the export's CPU samples (py-spy).

While ``skipping()`` is active, XNNPACKPassManager.transform runs the same passes in the same
order except those whose trigger is provably absent from the program *at the moment the pass
would run* (checked then, so a node an earlier pass creates still triggers it):

  * batch norm (FuseBatchNormPass, DecomposeBatchNorm): no node whose target is a batch norm;
  * Conv1dUnsqueezePass: no aten.convolution node;  PReLUReshapePass: no _prelu_kernel node;
  * ConvertToUpsampleBilinear2d / ConvertToSDPAPass: SubgraphMatcher needs every call_function
    target of a pattern to occur in the graph, so a pattern with a target the graph lacks cannot
    match; the pass is skipped when that holds for every one of its patterns.

A skipped pass would have changed nothing but re-derived metadata it already had: the artifact
is the same bytes (model.pte and weights.ptd sha256 equal with and without this). Any pass not
named here, and any other pass list (a `passes=` argument), runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .patching import ScopedPatch


def _targets(graph: Any) -> set[str]:
    """Names of the call_function targets in a graph (edge ops print as `aten.x.default`)."""
    return {str(n.target) for n in graph.nodes if n.op == "call_function"}


def _pattern_can_match(patterns: Callable[[], Any], present: set[str]) -> bool:
    """Whether any pattern's call_function targets all occur in the graph (SubgraphMatcher's
    necessary condition; the pattern graphs are edge-dialect, as the program is)."""
    return any(_targets(p.graph) <= present for p in patterns())


# Building the pattern graphs (export + to_edge of small modules) costs ~3 s per process, as
# much as the retraces skipped. For the ExecuTorch release checked (tests/test_export_time.py:
# every pattern contains these), one op each pattern family needs stands in for the patterns;
# any other release builds them.
_PATTERN_OPS_VERSION = "1.5.1"
_PATTERN_OPS = {"bilinear_2d": ("aten.upsample_bilinear2d.vec",),
                "sdpa": ("aten._softmax.default", "aten.any.dim", "aten.logical_not.default")}


def _needs(family: str, patterns: Callable[[], Any]) -> Callable[[set[str]], bool]:
    from importlib.metadata import version

    if version("executorch") != _PATTERN_OPS_VERSION:
        return lambda present: _pattern_can_match(patterns, present)
    ops = _PATTERN_OPS[family]
    return lambda present: all(any(f"{op}>" in t for t in present) for op in ops)


def _triggers() -> dict[type, Callable[[set[str]], bool]]:
    """Pass class -> "has work" given the program's target names (True: run it)."""
    from executorch.backends.xnnpack._passes import (
        Conv1dUnsqueezePass,
        ConvertToSDPAPass,
        ConvertToUpsampleBilinear2d,
        DecomposeBatchNorm,
        FuseBatchNormPass,
        PReLUReshapePass,
    )
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    def batch_norm(t: set[str]) -> bool:
        return any("batch_norm" in x for x in t)

    return {
        FuseBatchNormPass: batch_norm,
        DecomposeBatchNorm: batch_norm,
        Conv1dUnsqueezePass: lambda t: any("convolution" in x for x in t),
        PReLUReshapePass: lambda t: any("_prelu_kernel" in x for x in t),
        ConvertToUpsampleBilinear2d: _needs("bilinear_2d", bilinear_2d.get_graphs),
        ConvertToSDPAPass: _needs("sdpa", sdpa.get_graphs),
    }


def _transform(self: Any) -> Any:
    """XNNPACKPassManager.transform (executorch 1.5), minus the passes with nothing to do."""
    from executorch.backends.xnnpack._passes import XNNPACKPass
    from executorch.exir.pass_base import ExportPass
    from executorch.exir.program._program import _transform as run_pass

    triggers = _triggers()
    ep = self.exported_program
    for pass_ in self.passes:
        has_work = triggers.get(pass_)
        if has_work is not None and not has_work(_targets(ep.graph_module.graph)):
            continue
        if issubclass(pass_, XNNPACKPass):
            transform_pass = pass_(ep)
        elif issubclass(pass_, ExportPass):
            transform_pass = pass_()
        else:
            raise RuntimeError(f"Expecting ExportPass or ExportPass(), but got pass: {pass_} with type: {type(pass_)}")
        ep = run_pass(ep, transform_pass)
    return ep


# XNNPACK preprocess skips its passes that have no work while a `with skipping():` block runs.
skipping = ScopedPatch(("executorch.backends.xnnpack._passes", "XNNPACKPassManager.transform", _transform))
