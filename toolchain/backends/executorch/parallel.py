"""Trace and lower the split's programs on two cores: one group in a forked child, one here.

ExecuTorch traces and lowers the methods of one program one after the other, in Python, on one
core (torch.export, to_edge's decompositions and passes, the partitioner, XNNPACK's passes and
preprocess: ~85% of a t5-small-sized int8 export). The methods are independent until
to_executorch, which needs them all in one EdgeProgramManager to emit one model.pte. So the
programs are split into two groups (``groups``); a forked child traces and lowers one group and
hands each lowered ExportedProgram back through ExecuTorch's own serializer (exir.serde: the
graph, its constants, each delegate's processed bytes and named data; ~4 s to save and ~1 s to
load an int8 t5-small encode), while this process does the other. The merged manager then
serializes as before: one model.pte with every method, the same bytes as lowering in one process
(tests/test_export_time.py). Measured on a 2-vCPU AVX2 EPYC, t5-small-sized int8: export 89 s
before, 50-54 s with this and retraces.py.

Why fork and not spawn: the child inherits the quantized modules and every patch in effect
(provenance.shared, xnnpack_passes.skipping, retraces.skipping) without a second import and
checkpoint load (~10 s here). The child only lowers: it writes nothing but its result files, its
Python stdout/stderr are fresh objects (a lock the parent's progress thread held at fork time
would otherwise deadlock it), torch runs on one thread in it, and it leaves with os._exit.

When the child fails, its programs are lowered here after all, so an error in them surfaces with
the in-process traceback and the artifact never depends on the child. One process (``jobs``):
EDGESEQ_LOWER_JOBS=1, not Linux (fork after macOS frameworks start is unsafe), one core, or a
`build --jobs` worker (the cells already share the cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "EDGESEQ_LOWER_JOBS"  # 1 = lower every program in this process


def jobs() -> int:
    """Processes to lower with: EDGESEQ_LOWER_JOBS if set, else 2 where fork exists and 2 cores are ours."""
    if ENV in os.environ:
        try:
            return min(2, max(1, int(os.environ[ENV])))
        except ValueError:
            return 1
    if not sys.platform.startswith("linux"):  # macOS: fork after Objective-C/Accelerate init is unsafe
        return 1
    return min(2, len(os.sched_getaffinity(0)))


def groups(names: list[str]) -> tuple[list[str], list[str]]:
    """The program names in two groups: decode and about half of the rest stay here.

    Every program takes about as long to lower (the shorter encodes have the same layers, so
    the same nodes), so each goes to the side with fewer, the child's on a tie. Decode stays
    here: the child's programs cost a save and a load on top (~5 s for a t5-small int8 encode).
    """
    first = "decode" if "decode" in names else sorted(names)[0]
    here: list[str] = [first]
    there: list[str] = []
    for name in sorted(n for n in names if n != first):
        (here if len(here) < len(there) else there).append(name)
    return here, there


def lower(traces: dict[str, Callable[[], Any]], lower_group: Callable[[dict[str, Callable[[], Any]]], Any],
          jobs: int) -> Any:
    """``lower_group(traces) -> EdgeProgramManager`` over every program, on ``jobs`` (1 or 2) processes.

    ``traces`` maps each program's name to a function that exports it (torch.export); a group
    calls its own, so the child traces its programs too. Returns one EdgeProgramManager with
    every method, in the order of ``traces``.
    """
    here, there = groups(list(traces))
    if jobs < 2 or not there:
        return lower_group(traces)
    with tempfile.TemporaryDirectory(prefix="edgeseq-lower-") as tmp:
        pid = _fork_child({n: traces[n] for n in there}, lower_group, Path(tmp))
        try:
            edge_here = lower_group({n: traces[n] for n in here})
        except BaseException:
            _kill(pid)
            raise
        lowered = _collect(pid, there, Path(tmp))
        why = _last_line(Path(tmp) / "child.log") if lowered is None else ""
    if lowered is None:  # the child failed: lower its programs here (same error, in-process traceback)
        from ... import progress

        progress.note(f"lowering {', '.join(there)} in a second process failed ({why or 'no message'}); "
                      "lowering them here")
        edge_there = lower_group({n: traces[n] for n in there})
        lowered = {n: edge_there.exported_program(n) for n in there}
    return _merge({**{n: edge_here.exported_program(n) for n in here}, **lowered}, list(traces))


def _fork_child(programs: dict[str, Callable[[], Any]], lower_group: Callable[[dict[str, Callable[[], Any]]], Any],
                tmp: Path) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: lower, save each method, leave without running the parent's exit handlers
        _die_with(parent)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (fresh objects with fresh locks; see module doc)
        sys.stderr = open(tmp / "child.log", "w")  # noqa: SIM115
        import torch
        from executorch.exir.serde.serialize import save

        torch.set_num_threads(1)
        edge = lower_group(programs)
        for name in programs:
            save(edge.exported_program(name), str(tmp / f"{name}.pt2"))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with(parent: int) -> None:
    """Linux: the kernel ends this process when its parent ends (a killed export leaves no
    child lowering on)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the call took effect
        os._exit(1)


def _collect(pid: int, names: list[str], tmp: Path) -> dict[str, Any] | None:
    """The child's lowered programs, or None when it did not finish cleanly."""
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:  # interrupted while waiting (Ctrl-C): the child goes too, reaped
        _kill(pid)
        raise
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    from executorch.exir.serde.serialize import load

    programs = {name: load(str(tmp / f"{name}.pt2")) for name in names}
    for ep in programs.values():
        _positional(ep.graph)
    return programs


def _positional(graph: Any) -> None:
    """Arguments back in the form torch.export gives them: positional up to the last one given.

    The serializer writes every argument with its name and the deserializer returns the ones
    after a defaulted argument as keywords (torchao's dequantize_affine(..., input_dtype,
    quant_min=, quant_max=)). ExecuTorch's pattern passes compare args positionally, so
    to_executorch's quant fusion missed the int8 embedding (dequantize_affine left unfused:
    "Missing out variants: torchao::dequantize_affine").
    """
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not node.kwargs:
            continue
        args, kwargs = list(node.args), dict(node.kwargs)
        for arg in schema.arguments[len(args):]:
            if arg.kwarg_only or arg.name not in kwargs:
                break
            args.append(kwargs.pop(arg.name))
        node.args, node.kwargs = tuple(args), kwargs


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _merge(lowered: dict[str, Any], order: list[str]) -> Any:
    """One EdgeProgramManager over lowered programs (each was verified by its own lowering)."""
    from executorch.exir import EdgeCompileConfig
    from executorch.exir.program._program import EdgeProgramManager

    return EdgeProgramManager({n: lowered[n] for n in order},
                              compile_config=EdgeCompileConfig(_check_ir_validity=False))
