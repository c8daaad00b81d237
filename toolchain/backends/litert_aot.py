"""LiteRT on vendor NPUs, compiled ahead of time: Qualcomm (QNN HTP) and MediaTek (NeuroPilot APU).

Targets ``litert-qualcomm`` and ``litert-mediatek``: runtime ``litert``, backend
``qualcomm`` or ``mediatek``, and ``options: {soc_model: ...}``, one of the SoC names
of ``ai_edge_litert.aot.vendors.<vendor>.target.SocModel`` (e.g. SM8650, MT6989).
Experimental: nothing here has run on an NPU.

Flow:

    toolchain/backends/litert.py lower()        the litert-cpu flatbuffer, unchanged: signatures
                                                encode/decode, KV cache as explicit signature I/O,
                                                the recipe's quantization (ai-edge-quantizer)
    -> ai_edge_litert.aot.aot_compile(model, target=<vendor Target(SoC)>)
                                                LiteRT's AOT pipeline: its MLIR transforms, then
                                                tools/apply_plugin_main with the vendor's compiler
                                                plugin (shipped in the ai-edge-litert wheel). The
                                                plugin partitions every subgraph, compiles what the
                                                NPU takes into vendor bytecode behind DISPATCH_OP
                                                custom ops; the rest stays builtin ops for the CPU.

The artifact keeps both models: ``model_<Manufacturer>_<SoC>.tflite`` (the compiled one,
which the programs point to) and ``model.tflite`` (the CPU model it was compiled from,
the fallback a device without that NPU loads, as LiteRT's AI Pack export does).
The manifest's ``litert_aot`` section records vendor, SoC, the compiler's partition statistics
per signature (``Partitioned subgraph<i>, selected N ops, from a total of M ops``, as
``CompilationResult`` reports them), the op counts of the compiled model (DISPATCH_OP vs
ops left on the CPU) and the SDK package version; ``delegation`` the same per program.

Where the compiler finds the vendor SDK (what ``check`` detects, before any work):
the ``apply_plugin`` component runs the tool with ``LD_LIBRARY_PATH`` = the SDK package's
``path_to_sdk_libs()`` (if ``ai_edge_litert_sdk_<vendor>`` imports), then every directory
of the ai_edge_litert package, then the caller's ``LD_LIBRARY_PATH``.

* Qualcomm: the plugin is linked against the QAIRT host libraries (libQnnHtp.so,
  libQnnSystem.so, ...): without them it does not load at all.
* MediaTek: the plugin loads, then dlopens NeuronAdapter at compile time
  (libneuronusdk_adapter.mtk.so, libneuron_adapter_mgvi.so, libneuron_adapter.so by
  name, then libneuron_adapter.so in the plugin's directory).

``check`` dlopens exactly those files in a child process with exactly that
``LD_LIBRARY_PATH``. The SDK packages (``ai-edge-litert-sdk-qualcomm``,
``ai-edge-litert-sdk-mediatek``) are source packages that download the SDK from the
vendor's site when pip installs them; if that download fails they install empty.

Recipes: the litert-cpu schemes (fp32, fp16 weights, dynamic-range int8). NPUs compute
in integers or fp16; dynamic-range int8 keeps float activations around int8 weights,
which a vendor compiler may not take: what it took and what it left on the CPU is in
the manifest (``litert_aot.partitions``, ``litert_aot.cpu_ops``), never assumed.

NPU programs cannot execute here: ``can_execute`` says so and ``verify_structure`` reads
the compiled flatbuffer back (signatures, tensor shapes and dtypes, DISPATCH_OP counts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import Lowered
from . import litert

CACHE_MODE = litert.CACHE_MODE  # the same flatbuffer as litert-cpu: cache as explicit I/O
SIGNATURES = litert.SIGNATURES
DISPATCH_OP = "DISPATCH_OP"  # LiteRT's custom op for a compiled NPU partition
OPTIONS = {"soc_model": "the SoC to compile for (ai_edge_litert.aot.vendors.<vendor>.target.SocModel)"}
_APPLY_PLUGIN = "tools/apply_plugin_main"
_NO_NPU_HERE = ("LiteRT NPU artifacts execute only on a device with the target SoC and LiteRT's vendor "
                "dispatch library; here `edgeseq verify` checks structure only")


# --------------------------------------------------------------------------- vendors


class Vendor:
    """One NPU vendor of LiteRT's AOT flow: its SoC names, AOT target and SDK lookup."""

    name = ""          # target.backend
    manufacturer = ""  # as LiteRT spells it
    sdk = ""           # what the vendor SDK is called
    package = ""       # the pip package that downloads it at install time
    module = ""        # the module that package installs
    plugin = ""        # the compiler plugin in the ai_edge_litert package (its backend's path)
    libs = ""          # the SDK host libraries the plugin needs, for messages

    def soc_models(self) -> list[str]:
        return [m.value for m in self._target_lib().SocModel if m.value != "ALL"]

    def aot_target(self, soc: str):
        t = self._target_lib()
        return t.Target(t.SocModel(soc))

    def _target_lib(self):
        raise NotImplementedError

    def _sdk_libs_call(self, sdk_module, soc: str):
        return sdk_module.path_to_sdk_libs()

    def candidates(self, plugin: Path) -> list[str]:
        """What must dlopen for the compiler to reach the SDK (any one of them)."""
        return [str(plugin)]

    def why_not(self, loader_error: str) -> str:
        """The loader's error, as a user should read it."""
        return loader_error

    def sdk_libs(self, soc: str) -> tuple[str | None, str]:
        """The directory the vendor backend puts first on LD_LIBRARY_PATH, as it computes it,
        and the package's state: "ok", "missing" (not installed), "empty" (no SDK files) or an error."""
        import importlib

        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None, "missing"
        try:  # the package prints a warning on stderr when its SDK files are missing
            with contextlib.redirect_stderr(io.StringIO()):
                path = self._sdk_libs_call(mod, soc)
        except NotImplementedError as e:
            return None, str(e)
        return (str(path), "ok") if path else (None, "empty")

    def sdk_problem(self, target_name: str, soc: str) -> str | None:
        """None if the compiler plugin can reach the SDK, else one line: what is missing, how to get it."""
        return _sdk_problem(self, target_name, soc, os.environ.get("LD_LIBRARY_PATH", ""))


class Qualcomm(Vendor):
    name, manufacturer, sdk = "qualcomm", "Qualcomm", "QAIRT SDK"
    package, module = "ai-edge-litert-sdk-qualcomm", "ai_edge_litert_sdk_qualcomm"
    libs = "x86_64 host libraries (its lib/x86_64-linux-clang: libQnnHtp.so, libQnnSystem.so, ...)"

    @property
    def plugin(self) -> str:
        from ai_edge_litert.aot.vendors.qualcomm import qualcomm_backend

        return str(qualcomm_backend.COMPILER_PLUGIN_LIB_PATH)

    def _target_lib(self):
        from ai_edge_litert.aot.vendors.qualcomm import target

        return target


class MediaTek(Vendor):
    name, manufacturer, sdk = "mediatek", "MediaTek", "NeuroPilot SDK"
    package, module = "ai-edge-litert-sdk-mediatek", "ai_edge_litert_sdk_mediatek"
    libs = "host libraries (libneuron_adapter.so and its dependencies)"
    # What the plugin dlopens by name (litert/vendors/mediatek/neuron_adapter_api.cc, off-device).
    _ADAPTERS = ("libneuronusdk_adapter.mtk.so", "libneuron_adapter_mgvi.so", "libneuron_adapter.so")

    @property
    def plugin(self) -> str:
        from ai_edge_litert.aot.vendors.mediatek import mediatek_backend

        return str(mediatek_backend.COMPILER_PLUGIN_LIB_PATH)

    def _target_lib(self):
        from ai_edge_litert.aot.vendors.mediatek import target

        return target

    def _sdk_libs_call(self, sdk_module, soc: str):
        # As the MediaTek backend does: the NeuroPilot version follows the SoC (v8, or v9 for MT6993).
        return sdk_module.path_to_sdk_libs(self.aot_target(soc).recommended_np_version)

    def candidates(self, plugin: Path) -> list[str]:
        return [*self._ADAPTERS, str(plugin.parent / "libneuron_adapter.so")]

    def why_not(self, loader_error: str) -> str:
        return f"none of {', '.join(self._ADAPTERS)} loads"


VENDORS: dict[str, Vendor] = {v.name: v for v in (Qualcomm(), MediaTek())}


def _package_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("ai_edge_litert")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _resource(relative: str) -> Path | None:
    root = _package_dir()
    path = root / relative if root else None
    return path if path is not None and path.is_file() else None


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# Loads each argument in turn (RTLD_LAZY: resolving the library and its dependencies is
# the question, not running anything); exit 0 at the first that loads, else print why not.
_PROBE = """
import ctypes, os, sys
errors = []
for path in sys.argv[1:]:
    try:
        ctypes.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_LOCAL)
        sys.exit(0)
    except OSError as e:
        errors.append(str(e))
print(errors[0] if errors else "nothing to load")
sys.exit(1)
"""


def _loads(candidates: list[str], ld_library_path: str) -> tuple[bool, str]:
    env = {**os.environ, "LD_LIBRARY_PATH": ld_library_path}
    r = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE, *candidates], env=env,
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        return True, ""
    if r.returncode < 0:
        return False, f"loading {candidates[0]} crashed (signal {-r.returncode})"
    return False, (r.stdout.strip().splitlines() or ["did not load"])[-1]


@functools.lru_cache(maxsize=None)
def _sdk_problem(vendor: Vendor, target_name: str, soc: str, _ld_env: str) -> str | None:
    """Vendor.sdk_problem, cached per vendor, SoC and caller's LD_LIBRARY_PATH (a child process per call)."""
    from ai_edge_litert.aot.core import common

    plugin = _resource(vendor.plugin)
    if plugin is None:
        return (f"target {target_name}: ai-edge-litert {_version('ai-edge-litert')} ships no {vendor.manufacturer} "
                f"compiler plugin ({vendor.plugin}); install an ai-edge-litert release that has it")
    libs_dir, state = vendor.sdk_libs(soc)
    # The library path apply_plugin gives its tool (ai_edge_litert/aot/core/apply_plugin.py).
    path = common.construct_ld_library_path()
    if libs_dir:
        path = f"{libs_dir}{os.pathsep}{path}" if path else libs_dir
    ok, loader = _loads(vendor.candidates(plugin), path)
    if ok:
        return None
    fix = (f"pip install {vendor.package} (a source package that downloads the {vendor.sdk} from "
           f"{vendor.manufacturer}'s site at install time, so it needs that site reachable), or put a directory "
           f"holding the {vendor.sdk} {vendor.libs} on LD_LIBRARY_PATH")
    head = f"target {target_name}: the {vendor.manufacturer} NPU compiler cannot load the {vendor.sdk}"
    loader = vendor.why_not(loader)
    if state == "missing":
        return f"{head} ({loader}); install it: {fix}"
    installed = " ".join(x for x in (vendor.package, _version(vendor.package)) if x)
    if state == "empty":
        return (f"{head}: {installed} is installed but holds no SDK files (its "
                f"install-time download failed); reinstall it with {vendor.manufacturer}'s site reachable "
                f"(pip install --force-reinstall --no-cache-dir {vendor.package}), or put a directory holding the "
                f"{vendor.sdk} {vendor.libs} on LD_LIBRARY_PATH")
    if state != "ok":
        return f"{head}: {vendor.package} cannot provide it for {soc}: {state}"
    return f"{head}: the libraries of {installed} do not load ({loader})"


# --------------------------------------------------------------------------- interface


def _tools() -> tuple[bool, str]:
    """LiteRT, its converter and the AOT tool."""
    ok, why = litert.available()
    if not ok:
        return ok, why
    if _resource(_APPLY_PLUGIN) is None:
        return False, (f"this ai-edge-litert ({sys.platform}) has no {_APPLY_PLUGIN}: LiteRT AOT compilation "
                       f"runs on Linux x86-64")
    return True, ""


def available() -> tuple[bool, str]:
    """The AOT tools and at least one vendor SDK. This module serves every vendor and takes no
    target here, so a missing SDK of one vendor when another's is present shows up in `check`."""
    ok, why = _tools()
    if not ok:
        return ok, why
    if all(v.sdk_problem(f"litert-{v.name}", v.soc_models()[0]) for v in VENDORS.values()):
        install = " or ".join(f"pip install {v.package}" for v in VENDORS.values())
        return False, f"no NPU vendor SDK installed: {install} (each downloads its SDK at install time)"
    return True, ""


def can_execute() -> tuple[bool, str]:
    return False, _NO_NPU_HERE


def check(recipe, target) -> None:
    """Everything this target needs, before any model work: vendor, SoC, recipe schemes, AOT tool, SDK."""
    from ..errors import InputError
    from . import check_schemes

    vendor = VENDORS.get(target.backend)
    if vendor is None:
        raise InputError(f"target {target.name}: litert NPU backend {target.backend!r} is not available; "
                         f"available: {', '.join(VENDORS)}")
    options = target.options
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"target {target.name}: unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    ok, why = _tools()
    if not ok:
        raise InputError(f"target {target.name}: {why}")
    socs = vendor.soc_models()
    soc = options.get("soc_model")
    if soc not in socs:
        raise InputError(f"target {target.name}: option 'soc_model' must be one of {', '.join(socs)}, got {soc!r}")
    check_schemes(recipe, target, litert.SCHEMES)
    problem = vendor.sdk_problem(target.name, soc)
    if problem:
        raise InputError(problem)


def preload() -> None:
    from ai_edge_litert import interpreter  # noqa: F401


def versions() -> dict[str, str]:
    out = litert.versions()
    for v in VENDORS.values():
        if (ver := _version(v.package)) is not None:
            out[v.package] = ver
    return out


def open(artifact, threads: int | None = None):  # noqa: A001 (the interface's name)
    from ..errors import InputError

    raise InputError(f"{artifact.path}: {_NO_NPU_HERE}")


# --------------------------------------------------------------------------- compilation


def _log_summary(message: str) -> str:
    """apply_plugin's error names a log file; its error lines say what went wrong."""
    m = re.search(r"See (\S+) for details", message)
    lines: list[str] = []
    if m and Path(m.group(1)).is_file():
        for line in Path(m.group(1)).read_text(errors="replace").splitlines():
            line = line.strip(" \t└")
            if re.search(r"ERROR|Failed|cannot open|Could not", line) and line not in lines:
                lines.append(line)
    detail = " | ".join(lines[:3])
    return f"{detail} (full log: {m.group(1)})" if m and detail else message


def _compile(cpu_file: Path, vendor: Vendor, soc: str, out_dir: Path, target_name: str):
    """aot_compile the CPU model for one SoC; write the compiled model into out_dir.

    Returns (file name, backend target id, partition stats or None, seconds)."""
    from ai_edge_litert.aot import aot_compile as aot

    from ..errors import InputError

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=".aot-", dir=out_dir) as work:
        try:  # tqdm bars (stderr) and "Skipping failed compilation" (stdout) are not for users
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                result = aot.aot_compile(str(cpu_file), output_dir=work, target=vendor.aot_target(soc),
                                         keep_going=False)
        except ValueError as e:
            raise InputError(f"target {target_name}: {vendor.manufacturer} AOT compilation for {soc} failed: "
                             f"{_log_summary(str(e))}") from None
        if len(result.models_with_backend) != 1:
            raise RuntimeError(f"aot_compile returned {len(result.models_with_backend)} models for one SoC")
        backend, model = result.models_with_backend[0]
        name = f"model_{backend.target_id or vendor.name}.tflite"
        model.save(out_dir / name, export_only=True)
    return name, backend.target_id, model.partition_stats, time.time() - t0


def _structure(data: bytes) -> dict[str, Any]:
    """A flatbuffer's signatures (tensor name, shape, dtype per input/output), op counts per
    signature (custom ops by their custom code) and LiteRT's build stamp, read without an interpreter
    (one with DISPATCH_OP needs the vendor's dispatch library to load)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAsModel(data, 0)
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    sigs: dict[str, Any] = {}
    for i in range(model.SignatureDefsLength()):
        s = model.SignatureDefs(i)
        sg = model.Subgraphs(s.SubgraphIndex())

        def io_list(n, get, sg=sg):
            out = []
            for j in range(n):
                t = sg.Tensors(get(j).TensorIndex())
                shape = t.ShapeAsNumpy()  # 0, not an array, for a scalar
                out.append({"tensor": get(j).Name().decode(),
                            "shape": [] if isinstance(shape, int) else [int(d) for d in shape],
                            "dtype": dtypes.get(t.Type(), str(t.Type()))})
            return out

        ops = Counter()
        for o in range(sg.OperatorsLength()):
            code = model.OperatorCodes(sg.Operators(o).OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            if name == "CUSTOM" and code.CustomCode():
                name = code.CustomCode().decode()
            ops[name] += 1
        sigs[s.SignatureKey().decode()] = {"subgraph": s.SubgraphIndex(), "inputs": io_list(s.InputsLength(), s.Inputs),
                                           "outputs": io_list(s.OutputsLength(), s.Outputs),
                                           "ops": dict(sorted(ops.items()))}
    stamp = None
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        if md.Name() == b"LiteRtStamp":
            raw = model.Buffers(md.Buffer()).DataAsNumpy()
            raw = bytes(raw) if not isinstance(raw, int) else b""
            stamp = [p.decode(errors="replace") for p in raw.split(b"\0") if p.strip(b"\0")]
    return {"signatures": sigs, "build_stamp": stamp}


def _io_mismatch(prog: dict[str, Any], sig: dict[str, Any]) -> str | None:
    """None if the signature has exactly the program's tensors (name, shape, runtime dtype)."""
    for kind in ("inputs", "outputs"):
        want = sorted((e["tensor"], e["shape"], e["runtime_dtype"]) for e in prog[kind])
        got = sorted((e["tensor"], e["shape"], e["dtype"]) for e in sig[kind])
        if want != got:
            return f"{kind} differ from the manifest"
    return None


def lower(parts, recipe, target, out_dir: Path, calibration: list[list[int]] | None = None) -> Lowered:
    from ..hashing import sha256_file

    check(recipe, target)
    vendor, soc = VENDORS[target.backend], target.options["soc_model"]
    # The CPU flatbuffer exactly as litert-cpu writes it (litert.check wants its own backend name).
    cpu = litert.lower(parts, recipe, dataclasses.replace(target, backend="xnnpack"), out_dir, calibration)
    cpu_file = out_dir / litert.TFLITE
    cpu_struct = _structure(cpu_file.read_bytes())
    name, target_id, stats, seconds = _compile(cpu_file, vendor, soc, out_dir, target.name)
    struct = _structure((out_dir / name).read_bytes())

    programs = cpu.programs
    for prog in SIGNATURES:
        sig = struct["signatures"].get(prog)
        bad = "missing" if sig is None else _io_mismatch(programs[prog], sig)
        if bad:  # the compiler must keep the signatures the Session contract relies on
            raise RuntimeError(f"{name}: signature {prog} {bad} after AOT compilation")
        programs[prog].update(file=name, method=prog, cpu_fallback_file=litert.TFLITE)

    sig_of = {s["subgraph"]: k for k, s in cpu_struct["signatures"].items()}
    partitions = None if stats is None else [
        {"signature": sig_of.get(p.subgraph_index, f"subgraph_{p.subgraph_index}"), "subgraph": p.subgraph_index,
         "ops_on_npu": p.num_ops_offloaded, "ops_total": p.num_total_ops,
         "npu_partitions": p.num_partitions_offloaded} for p in stats.subgraph_stats]
    compiled_ops = {k: s["ops"] for k, s in struct["signatures"].items()}
    npu = {
        "vendor": vendor.name, "soc_manufacturer": vendor.manufacturer, "soc_model": soc, "aot_target": target_id,
        "file": name, "cpu_fallback_file": litert.TFLITE,
        "compiler_plugin": Path(vendor.plugin).name, "sdk_package": vendor.package,
        "sdk_package_version": _version(vendor.package),
        "compile_seconds": round(seconds, 2),
        # What the compiler reported; None when it reports nothing (a no-op plugin).
        "partitions": partitions,
        "dispatch_ops": {k: ops.get(DISPATCH_OP, 0) for k, ops in compiled_ops.items()},
        "cpu_ops": {k: {op: n for op, n in ops.items() if op != DISPATCH_OP} for k, ops in compiled_ops.items()},
        "build_stamp": struct["build_stamp"],
        "cpu_model_sha256": sha256_file(cpu_file),
    }
    report = {**cpu.report, "litert_aot": npu}
    if isinstance(report.get("litert"), dict):
        report["litert"] = {**report["litert"], "delegate": (
            f"{vendor.manufacturer} {soc} NPU through DISPATCH_OP (compiled ahead of time); ops it did not take "
            f"run on the CPU; {litert.TFLITE} is the CPU-only fallback")}
    if partitions is not None:
        report["delegation"] = {p["signature"]: {
            "delegate": f"{vendor.manufacturer} {soc} NPU", "delegated_subgraphs": p["npu_partitions"],
            "delegated_nodes": p["ops_on_npu"], "portable_nodes": p["ops_total"] - p["ops_on_npu"],
            "delegated_fraction": round(p["ops_on_npu"] / p["ops_total"], 4) if p["ops_total"] else 1.0,
            "portable_ops": npu["cpu_ops"].get(p["signature"], {})} for p in partitions}
    return Lowered(files=[name, litert.TFLITE], programs=programs, report=report, tool_versions=versions())


def verify_structure(artifact) -> dict[str, Any]:
    """What can be checked without the NPU: both flatbuffers read back and compared with the manifest.

    The artifact was opened with its hashes checked, so every file is the one exported.
    """
    m = artifact.manifest
    npu, progs = m["litert_aot"], m["programs"]
    compiled = _structure(artifact.file(npu["file"]).read_bytes())
    fallback = _structure(artifact.file(npu["cpu_fallback_file"]).read_bytes())
    failures = []
    for label, struct in (("compiled", compiled), ("cpu fallback", fallback)):
        for prog in SIGNATURES:
            sig = struct["signatures"].get(prog)
            bad = "missing" if sig is None else _io_mismatch(progs[prog], sig)
            if bad:
                failures.append(f"{label} model: signature {prog} {bad}")
    for prog, n in npu["dispatch_ops"].items():
        got = compiled["signatures"].get(prog, {}).get("ops", {}).get(DISPATCH_OP, 0)
        if got != n:
            failures.append(f"{prog}: {got} {DISPATCH_OP} ops, the manifest says {n}")
    if any(DISPATCH_OP in fallback["signatures"].get(p, {}).get("ops", {}) for p in SIGNATURES):
        failures.append(f"the cpu fallback model has {DISPATCH_OP} ops")
    s = m["recipe"]["max_input_len"]
    dec = compiled["signatures"].get("decode", {})
    if any(len(i["shape"]) == 3 and i["shape"][:2] == [1, s] for i in dec.get("inputs", [])):
        failures.append("decode has an encoder-hidden-states-shaped input [1, S, d_model]")
    t = m["target"]
    return {
        "runtime": f"{t['runtime']}/{t['backend']}",
        "checked": ["file hashes", "signatures encode/decode in the compiled and the cpu fallback model",
                    "input/output tensor names, shapes, dtypes", f"{DISPATCH_OP} counts as exported",
                    "decode has no encoder hidden-states input"],
        "numerics": f"not run: needs the {npu['soc_manufacturer']} {npu['soc_model']} NPU",
        "npu_ops": {p: {"dispatch_ops": compiled["signatures"].get(p, {}).get("ops", {}).get(DISPATCH_OP, 0),
                    "cpu_ops": sum(n for op, n in compiled["signatures"].get(p, {}).get("ops", {}).items()
                                   if op != DISPATCH_OP)} for p in SIGNATURES},
        "build_stamp": compiled["build_stamp"],
        "passed": not failures, "failures": failures,
    }
