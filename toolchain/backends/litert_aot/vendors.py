"""The NPU vendors of LiteRT's AOT flow (their SoC names, AOT targets) and where the compiler
finds each vendor's SDK, which `LiteRTAotBackend.check` detects before any work.

The ``apply_plugin`` component runs the tool with ``LD_LIBRARY_PATH`` = the SDK package's
``path_to_sdk_libs()`` (if ``ai_edge_litert_sdk_<vendor>`` imports), then every directory
of the ai_edge_litert package, then the caller's ``LD_LIBRARY_PATH``.

* Qualcomm: the plugin is linked against the QAIRT host libraries (libQnnHtp.so,
  libQnnSystem.so, ...): without them it does not load at all.
* MediaTek: the plugin loads, then dlopens NeuronAdapter at compile time
  (libneuronusdk_adapter.mtk.so, libneuron_adapter_mgvi.so, libneuron_adapter.so by
  name, then libneuron_adapter.so in the plugin's directory).

`Vendor.sdk_problem` dlopens exactly those files in a child process with exactly that
``LD_LIBRARY_PATH``. The SDK packages (``ai-edge-litert-sdk-qualcomm``,
``ai-edge-litert-sdk-mediatek``) are source packages that download the SDK from the
vendor's site when pip installs them; if that download fails they install empty.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


class Vendor:
    """One NPU vendor of LiteRT's AOT flow: its SoC names, AOT target and SDK lookup."""

    name = ""          # target.backend
    manufacturer = ""  # as LiteRT spells it
    sdk = ""           # what the vendor SDK is called
    package = ""       # the pip package that downloads it at install time
    module = ""        # the module that package installs
    libs = ""          # the SDK host libraries the plugin needs, for messages

    @property
    def plugin(self) -> str:
        """The compiler plugin in the ai_edge_litert package (its backend's path); "" for none."""
        return ""

    def soc_models(self) -> list[str]:
        return [m.value for m in self._target_lib().SocModel if m.value != "ALL"]

    def aot_target(self, soc: str) -> Any:
        t = self._target_lib()
        return t.Target(t.SocModel(soc))

    def _target_lib(self) -> Any:
        raise NotImplementedError

    def _sdk_libs_call(self, sdk_module: Any, soc: str) -> Any:
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

    def _target_lib(self) -> Any:
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

    def _target_lib(self) -> Any:
        from ai_edge_litert.aot.vendors.mediatek import target

        return target

    def _sdk_libs_call(self, sdk_module: Any, soc: str) -> Any:
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


def resource(relative: str) -> Path | None:
    root = _package_dir()
    path = root / relative if root else None
    return path if path is not None and path.is_file() else None


def installed_version(dist: str) -> str | None:
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


@functools.cache
def _sdk_problem(vendor: Vendor, target_name: str, soc: str, _ld_env: str) -> str | None:
    """Vendor.sdk_problem, cached per vendor, SoC and caller's LD_LIBRARY_PATH (a child process per call)."""
    from ai_edge_litert.aot.core import common

    plugin = resource(vendor.plugin)
    if plugin is None:
        return (f"target {target_name}: ai-edge-litert {installed_version('ai-edge-litert')} ships no "
                f"{vendor.manufacturer} compiler plugin ({vendor.plugin}); "
                f"install an ai-edge-litert release that has it")
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
    installed = " ".join(x for x in (vendor.package, installed_version(vendor.package)) if x)
    if state == "empty":
        return (f"{head}: {installed} is installed but holds no SDK files (its "
                f"install-time download failed); reinstall it with {vendor.manufacturer}'s site reachable "
                f"(pip install --force-reinstall --no-cache-dir {vendor.package}), or put a directory holding the "
                f"{vendor.sdk} {vendor.libs} on LD_LIBRARY_PATH")
    if state != "ok":
        return f"{head}: {vendor.package} cannot provide it for {soc}: {state}"
    return f"{head}: the libraries of {installed} do not load ({loader})"
