"""Quantization per component of the split programs before lowering to XNNPACK (torchao).

Which weight belongs to which component (encoder, decoder, embeddings, lm_head) is the
split's own map (`Seq2SeqParts.weight_components`); the schemes this target honours are
the backend's capabilities (`LINEARS`, `EMBEDDINGS` in this package's __init__):

  linears:    8da8w (int8 per-channel weights, int8 dynamic per-token activations),
              8da4w (int4 weights in groups of `group_size`, int8 dynamic activations).
              Both lower fully into XNNPACK.
  embeddings: int8-weight (int8 rows, per-row scale), int4-weight (int4 in groups):
              ExecuTorch's quantized embedding kernels (embedding_byte / embedding_4bit).

Adapters follow the convention this relies on: the decode module exposes `.lm_head` (None
when tied, in which case it computes `F.linear(x, embed.weight)`); a tied head is untied
first when the head or the embeddings are quantized, so the two can differ. When they do not
(int8-weight embeddings + 8da8w head: the same int8 rows and fp32 row scales), weights.ptd
still stores the table once (export.py; the report's lm_head `tied_to` and `storage`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import InputError
from ...schemes import Component, QuantScheme, requested
from ..tied import TIED_TO
from . import BITS

if TYPE_CHECKING:
    from ...specs import Recipe
    from ...split import Seq2SeqParts


INT4 = torch.int4  # type: ignore[attr-defined]  # torch's sub-byte dtype, missing from its type stubs


def _weight(module: nn.Module) -> torch.Tensor:
    """A Linear's [out, in] or an Embedding's [rows, dim] weight."""
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w


def torchao_config(scheme: QuantScheme, group_size: int) -> Any:
    """The torchao config that quantizes one module to `scheme` (benchmarks/kernel_floor.py uses it too)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == QuantScheme.W8A8_DYNAMIC:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if scheme == QuantScheme.W4A8_DYNAMIC:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=INT4, weight_granularity=PerGroup(group_size))
    if scheme == QuantScheme.INT8_WEIGHT:
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == QuantScheme.INT4_WEIGHT:
        return IntxWeightOnlyConfig(weight_dtype=INT4, granularity=PerGroup(group_size))
    raise AssertionError(scheme)


def _untie_head(parts: Seq2SeqParts) -> None:
    """Give decode its own lm_head Linear (a copy of the embedding), so the two can be
    quantized differently and torchao never sees one module under two names."""
    dec = parts.decode
    if dec.lm_head is None:
        emb = dec.embed
        head = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        dec.lm_head = head


def components(parts: Seq2SeqParts, buckets: bool = False) -> dict[Component, list[tuple[str, nn.Module]]]:
    """Each component's modules as ("program.module name", module), each module once (the
    embedding both programs read is one module). `buckets`: the shorter encode programs'
    linears count as encoder too (quantized alike, so the weights file stores each tensor once)."""
    programs = {"encode": parts.encode, "decode": parts.decode,
                **{f"encode_{n}": b for n, b in parts.encode_buckets.items()}}
    out: dict[Component, list[tuple[str, nn.Module]]] = {c: [] for c in Component}
    seen: set[int] = set()
    for prog, weights in parts.weight_components(buckets).items():
        for weight, comp in weights.items():
            name = weight.removesuffix(".weight")
            module = programs[prog].get_submodule(name)
            if id(module) not in seen:
                seen.add(id(module))
                out[comp].append((f"{prog}.{name}", module))
    return out


def _check_groups(name: str, module: nn.Module, scheme: QuantScheme, group_size: int) -> None:
    if BITS.get(scheme) == 4:
        dim = _weight(module).shape[1]
        if dim % group_size:
            raise InputError(f"group_size {group_size} does not divide the input dim {dim} of {name} "
                             f"({scheme}); choose a group_size that divides it")


def stored_bytes(rows: int, cols: int, scheme: QuantScheme, group_size: int) -> int:
    """Stored bytes of a [rows, cols] weight under a scheme: values plus scales, as XNNPACK / the
    quantized kernels serialize them: fp32 scale per row; bf16 per group for XNNPACK's 8da4w (a
    .pte of 12 x 2048 x 512 such weights holds 2.06 bytes per group over the nibbles), fp32 per
    group for int4 embeddings. An estimate: the artifact's files give the exact total.
    benchmarks/roofline.py counts a decode step's bytes with it."""
    n = rows * cols
    if scheme == QuantScheme.NONE:
        return n * 4
    bits = BITS[scheme]
    groups = rows * (cols // group_size) if bits == 4 else rows
    scale = 2 if scheme == QuantScheme.W4A8_DYNAMIC else 4
    return n * bits // 8 + groups * scale


def _weight_bytes(module: nn.Module, scheme: QuantScheme, group_size: int) -> int:
    rows, cols = _weight(module).shape
    return stored_bytes(rows, cols, scheme, group_size)


def apply(parts: Seq2SeqParts, recipe: Recipe) -> dict[str, Any]:
    """Quantize `parts` in place as the recipe says (its schemes already checked against the
    backend's capabilities). Returns the per-component report for the manifest: scheme,
    number of tensors, fp32 bytes and estimated stored bytes."""
    q: dict[Component, QuantScheme] = {c: s for c, s in requested(recipe).items() if s != QuantScheme.NONE}
    tied = parts.decode.lm_head is None
    if Component.LM_HEAD in q or Component.EMBEDDINGS in q:
        _untie_head(parts)
    comps = components(parts, buckets=True)
    plan: list[tuple[QuantScheme, nn.Module]] = []
    for comp, scheme in q.items():
        for name, module in comps[comp]:
            _check_groups(name, module, scheme, recipe.group_size)
            plan.append((scheme, module))
    report: dict[str, Any] = {}
    for comp, mods in components(parts).items():  # the report counts each weight once
        scheme = q.get(comp, QuantScheme.NONE)
        report[comp.value] = {"scheme": scheme.value, "tensors": len(mods),
                              "fp32_bytes": sum(_weight(m).numel() * 4 for _, m in mods),
                              "estimated_bytes": sum(_weight_bytes(m, scheme, recipe.group_size) for _, m in mods)}
    if tied:  # export.tied_storage adds whether weights.ptd holds the table once
        report[Component.LM_HEAD.value]["tied_to"] = TIED_TO
    if not plan:
        return report
    from torchao.quantization import quantize_

    for scheme, module in plan:
        # quantize_ on the leaf module itself: its weight becomes a torchao tensor subclass.
        quantize_(module, torchao_config(scheme, recipe.group_size), filter_fn=lambda m, fqn, mod=module: m is mod)
    return report


def program_schemes(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Which scheme each program's weights use, for the manifest's `programs` entries."""
    return {
        "encode": {"linears": report["encoder"]["scheme"], "embeddings": report["embeddings"]["scheme"]},
        "decode": {"linears": report["decoder"]["scheme"], "embeddings": report["embeddings"]["scheme"],
                   "lm_head": report["lm_head"]["scheme"] if report["lm_head"]["tensors"]
                   else f"tied to embeddings ({report['embeddings']['scheme']})"},
    }
