"""litert-qualcomm / litert-mediatek: LiteRT AOT compilation for vendor NPUs.

What runs here, and what each test proves:

* Without the vendor SDK (the state of this machine: the SDK packages download it from
  the vendor's site at install time), `edgeseq export` stops in `check`, before the
  model is loaded, with one line naming the pip package.
* The AOT plumbing for real, through LiteRT's own no-op vendor, ``fallback`` (the
  backend AI Pack uses for the CPU model): our `lower` -> litert.lower -> the real
  `aot_compile` pipeline (backend resolution, MLIR-transform and apply-plugin steps,
  CompilationResult) -> the model written into the artifact -> manifest -> `verify`
  reading the flatbuffers back. The fallback step copies the model, so this proves the
  plumbing and the artifact/verify contract, not any NPU compilation.
* The real apply_plugin tool with the real vendor plugins, SDK absent: our call reaches
  the vendor's compiler plugin with the target's SoC, fails where the SDK is needed,
  and comes back as one line with the plugin's reason.
* The compile path with a vendor SDK runs if and only if `check` finds the SDK.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow  # exports LiteRT vendor AOT artifacts

pytest.importorskip("ai_edge_litert", reason="ai-edge-litert not installed")
pytest.importorskip("litert_torch", reason="litert-torch not installed")

from toolchain import backends  # noqa: E402
from toolchain.backends import litert_aot  # noqa: E402
from toolchain.backends.litert_aot import compile as aot_compile  # noqa: E402
from toolchain.backends.litert_aot import vendors  # noqa: E402
from toolchain.cli import main  # noqa: E402
from toolchain.errors import InputError  # noqa: E402

TARGETS = {"qualcomm": "litert-qualcomm", "mediatek": "litert-mediatek"}
SOC = {"qualcomm": "SM8650", "mediatek": "MT6989"}
# The SDK libraries each plugin reports missing when it runs without them.
PLUGIN_REASON = {"qualcomm": "libQnnHtp.so", "mediatek": "NeuronAdapter"}


def _sdk_problem(vendor: str) -> str | None:
    return litert_aot.VENDORS[vendor].sdk_problem(TARGETS[vendor], SOC[vendor])


def _recipe(base: Path) -> Path:
    p = base / "int8-small.yaml"
    p.write_text("format_version: 1\nname: int8-small\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                 "quantization: {encoder: 8da8w, decoder: 8da8w, embeddings: int8-weight, lm_head: 8da8w}\n"
                 "tolerance: {max_abs_logit_diff: 1.0e+9, min_sequence_match: 0.0, max_accuracy_drop: 1.0}\n")
    return p


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """One tiny random T5 (conftest's helper), untrained: nothing here compares outputs."""
    from helpers import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("ckpt") / "t5", "v1.0", seed=0, train_steps=0)


def _invoke(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, [line for line in result.output.strip().splitlines() if line]


# --------------------------------------------------------------------------- no SDK: fail first, in one line


@pytest.mark.parametrize("vendor", list(TARGETS))
def test_missing_sdk_fails_before_model_work(vendor, ckpt, tmp_path, monkeypatch):
    problem = _sdk_problem(vendor)
    if problem is None:
        pytest.skip(f"the {vendor} SDK is installed here: the compile test covers this target")
    from toolchain.backends.litert import export as litert_export
    from toolchain.checkpoint import SourceModel

    def no_model_work(*a, **k):
        raise AssertionError("model work started before the SDK check")

    monkeypatch.setattr(SourceModel, "load_model", no_model_work)
    monkeypatch.setattr(litert_export, "lower_cpu", no_model_work)
    out = tmp_path / "art"
    code, lines = _invoke("export", str(ckpt), "-t", TARGETS[vendor], "-r", str(_recipe(tmp_path)),
                          "-o", str(out))
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    msg = lines[0]
    pkg = litert_aot.VENDORS[vendor].package
    assert f"pip install {pkg}" in msg and "at install time" in msg and "LD_LIBRARY_PATH" in msg, msg
    assert TARGETS[vendor] in msg, msg
    assert not out.exists() and not list(tmp_path.glob(".art.tmp-*"))


def test_targets_are_listed_as_experimental():
    code, lines = _invoke("targets")
    assert code == 0
    rows = {line.split()[0]: line for line in lines}
    for name in TARGETS.values():
        assert "(experimental)" in rows[name], rows[name]
    assert "(experimental)" not in rows["litert-cpu"]
    code, lines = _invoke("targets", "--json")
    flags = {t["name"]: t["experimental"] for t in json.loads("\n".join(lines))}
    assert flags["litert-qualcomm"] is flags["litert-mediatek"] is True and flags["litert-cpu"] is False


def test_bad_soc_and_backend_are_named(tmp_path):
    from toolchain.specs import load_recipe, load_target

    recipe = load_recipe(str(_recipe(tmp_path)))
    p = tmp_path / "t.yaml"
    p.write_text("format_version: 1\nname: t\ndescription: x\nruntime: litert\nbackend: qualcomm\n"
                 "device_class: npu\noptions: {soc_model: SM0000}\n")
    with pytest.raises(InputError, match=r"soc_model' must be one of .*SM8650.*got 'SM0000'"):
        litert_aot.QUALCOMM.check(recipe, load_target(str(p)))
    p.write_text(p.read_text().replace("SM0000", "SM8650").replace("options: {", "options: {clock: 1, "))
    with pytest.raises(InputError, match="unknown option 'clock'"):
        litert_aot.QUALCOMM.check(recipe, load_target(str(p)))


class _FakeSdk:
    """Stands in for an installed SDK package's module: only its path_to_sdk_libs() answer."""

    def __init__(self, libs):
        self.libs, self.calls = libs, []

    def path_to_sdk_libs(self, *args):
        self.calls.append(args)
        return self.libs


@pytest.fixture
def fresh_probe():
    vendors._sdk_problem.cache_clear()
    yield
    vendors._sdk_problem.cache_clear()


def test_sdk_package_without_files_is_named(fresh_probe, monkeypatch):
    """The SDK package installed, its download failed (path_to_sdk_libs() -> None): say reinstall."""
    v = litert_aot.VENDORS["qualcomm"]
    monkeypatch.setitem(sys.modules, v.module, _FakeSdk(None))
    msg = v.sdk_problem("litert-qualcomm", "SM8650")
    assert msg and "\n" not in msg and "installed but holds no SDK files" in msg, msg
    assert f"pip install --force-reinstall --no-cache-dir {v.package}" in msg, msg


def test_sdk_libs_are_looked_up_as_the_vendor_backend_does(fresh_probe, monkeypatch, tmp_path):
    """MediaTek: the package is asked for the SoC's NeuroPilot version; a directory without
    NeuronAdapter fails; a loadable libneuron_adapter.so on LD_LIBRARY_PATH is found (the check
    is "does it load", not "is it a NeuroPilot SDK")."""
    v = litert_aot.VENDORS["mediatek"]
    fake = _FakeSdk(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    monkeypatch.setitem(sys.modules, v.module, fake)
    msg = v.sdk_problem("litert-mediatek", "MT6989")
    assert fake.calls == [("v8",)] and "do not load" in msg and "libneuron_adapter.so" in msg, msg
    lib_dir = tmp_path / "onpath"
    lib_dir.mkdir()
    # Any library that loads will do: the MediaTek plugin itself (it needs nothing else to load).
    (lib_dir / "libneuron_adapter.so").symlink_to(vendors.resource(v.plugin))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib_dir))
    assert v.sdk_problem("litert-mediatek", "MT6989") is None


# --------------------------------------------------------------------------- the real plugins, SDK absent


class Fallback(litert_aot.Vendor):
    """LiteRT's own no-op AOT backend as a vendor: same aot_compile pipeline, no SDK, no NPU."""

    name, manufacturer, package = "fallback", "LiteRT fallback (no NPU)", "no-sdk-package"

    def soc_models(self):
        return ["none"]

    def aot_target(self, soc):
        from ai_edge_litert.aot.vendors.fallback_backend import FallbackTarget

        return FallbackTarget()

    def sdk_problem(self, target_name, soc):
        return None


@pytest.fixture(scope="module")
def fallback_backend():
    """Backend "fallback" of runtime litert -> our Backend class with that vendor, for this module's tests only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(litert_aot.VENDORS, "fallback", Fallback())
        mp.setattr(litert_aot, "FALLBACK", litert_aot.LiteRTAotBackend(Fallback()), raising=False)
        mp.setitem(backends._RUNTIMES, "litert-fallback", "toolchain.backends.litert_aot:FALLBACK")
        yield
        backends._LOADED.pop("litert-fallback", None)


@pytest.fixture(scope="module")
def fallback_artifact(fallback_backend, ckpt, tmp_path_factory):
    """A tiny T5, int8, exported through our lower() with LiteRT's no-op AOT backend."""
    base = tmp_path_factory.mktemp("litert-aot")
    target = base / "litert-aot-fallback.yaml"
    target.write_text("format_version: 1\nname: litert-aot-fallback\ndescription: test\nruntime: litert\n"
                      "backend: fallback\ndevice_class: npu\nexperimental: true\noptions: {soc_model: none}\n")
    code, lines = _invoke("export", str(ckpt), "-t", str(target), "-r", str(_recipe(base)), "-o", str(base / "art"))
    assert code == 0, lines
    return base / "art"


def test_fallback_aot_artifact(fallback_artifact):
    from toolchain.artifact import open_artifact
    from toolchain.hashing import sha256_file

    art = open_artifact(fallback_artifact)
    m = art.manifest
    npu = m["litert_aot"]
    assert sorted(m["files"]) == ["model.tflite", "model_fallback.tflite", "tokenizer.json"]
    assert {p["file"] for p in m["programs"].values()} == {"model_fallback.tflite"}
    assert npu["vendor"] == "fallback" and npu["aot_target"] == "fallback" and npu["soc_model"] == "none"
    # The no-op backend reports no partitions and compiles nothing: the model comes back unchanged.
    assert npu["partitions"] is None and "delegation" not in m
    assert npu["dispatch_ops"] == {"encode": 0, "decode": 0}
    assert sha256_file(art.file("model_fallback.tflite")) == npu["cpu_model_sha256"] == m["files"]["model.tflite"][
        "sha256"]
    assert npu["cpu_ops"]["decode"].get("FULLY_CONNECTED", 0) > 0
    # The recipe reached the CPU model (litert.lower): int8 weights everywhere.
    assert all(set(w) == {"int8"} for w in m["litert"]["weights"].values()), m["litert"]["weights"]
    assert "ai-edge-litert" in m["tool_versions"]


def test_verify_is_structure_only_and_compares(fallback_artifact, tmp_path):
    import shutil

    code, lines = _invoke("verify", str(fallback_artifact))
    assert code == 0, lines
    assert "STRUCTURE ONLY" in lines[0] and "PASS (structure only)" in lines[-1], lines
    # A manifest that disagrees with the compiled model fails verify.
    art = tmp_path / "art"
    shutil.copytree(fallback_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["litert_aot"]["dispatch_ops"]["decode"] = 3
    (art / "manifest.json").write_text(json.dumps(manifest))
    code, lines = _invoke("verify", str(art))
    assert code == 1 and "decode: 0 DISPATCH_OP ops, the manifest says 3" in "\n".join(lines), lines


def test_run_refuses_in_one_line(fallback_artifact):
    code, lines = _invoke("run", str(fallback_artifact), "12 March 2020")
    assert code == 2 and len(lines) == 1 and "execute only on a device" in lines[0], lines


@pytest.mark.parametrize("vendor", list(TARGETS))
def test_real_plugin_is_reached_and_fails_on_the_sdk(vendor, fallback_artifact, tmp_path):
    """apply_plugin_main + the vendor's plugin from the wheel, on our int8 CPU model, SoC from the target."""
    if _sdk_problem(vendor) is None:
        pytest.skip(f"the {vendor} SDK is installed here: compilation would succeed")
    v = litert_aot.VENDORS[vendor]
    with pytest.raises(InputError) as e:
        aot_compile.compile_model(fallback_artifact / "model.tflite", v, SOC[vendor], tmp_path, TARGETS[vendor])
    msg = str(e.value)
    assert "\n" not in msg and f"AOT compilation for {SOC[vendor]} failed" in msg, msg
    assert PLUGIN_REASON[vendor] in msg, msg
    log = Path(re.search(r"full log: (\S+)\)", msg).group(1))
    text = log.read_text()
    log.unlink()  # the library's log file, named in the message
    assert Path(v.plugin).name in text  # the tool went for this vendor's plugin
    if vendor == "mediatek":  # this plugin loads without the SDK and starts compiling for our SoC
        assert "Compiling for MediaTek architecture: mt6989" in text, text
    assert list(tmp_path.iterdir()) == []  # the work directory is gone


# --------------------------------------------------------------------------- with the SDK


@pytest.mark.parametrize("vendor", list(TARGETS))
def test_compile_with_sdk(vendor, ckpt, tmp_path):
    problem = _sdk_problem(vendor)
    if problem is not None:
        pytest.skip(f"no {vendor} SDK here: {problem}")
    out = tmp_path / "art"
    code, lines = _invoke("export", str(ckpt), "-t", TARGETS[vendor], "-r", str(_recipe(tmp_path)),
                          "-o", str(out))
    assert code == 0, lines
    m = json.loads((out / "manifest.json").read_text())
    npu = m["litert_aot"]
    assert npu["soc_model"] == SOC[vendor] and npu["partitions"] is not None
    assert sorted(p["signature"] for p in npu["partitions"]) == ["decode", "encode"]
    assert all(p["ops_total"] > 0 for p in npu["partitions"])
    assert sum(npu["dispatch_ops"].values()) == sum(p["npu_partitions"] for p in npu["partitions"])
    code, lines = _invoke("verify", str(out))
    assert code == 0 and "PASS (structure only)" in lines[-1], lines
