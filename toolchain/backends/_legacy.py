"""Transition shim: a runtime module with the old function interface, as a Backend.
Removed once every runtime is a package with its own Backend class."""

from __future__ import annotations

from typing import Any

from ..schemes import QuantScheme, same_for_all
from .base import Backend, CacheMode, Capabilities


class ModuleBackend(Backend):
    def __init__(self, module: Any) -> None:
        self.module = module
        self.capabilities = Capabilities(  # type: ignore[misc]
            cache_mode=CacheMode(module.CACHE_MODE),
            schemes=same_for_all({s: s.value for s in QuantScheme}),  # the module's check() refuses
            encode_lengths=getattr(module, "ENCODE_LENGTHS", False),
            estimates=hasattr(module, "estimate"),
            executes=getattr(module, "EXECUTES", ""))

    def available(self):
        return self.module.available()

    def can_execute(self):
        fn = getattr(self.module, "can_execute", None)
        return fn() if fn else (True, "")

    def check_target(self, recipe, target):
        self.module.check(recipe, target)

    def lower(self, parts, recipe, target, out, calibration=None):
        return self.module.lower(parts, recipe, target, out, calibration=calibration)

    def open_session(self, artifact, threads=None):
        session = self.module.open(artifact, threads=threads)
        for attr, default in (("runs_loop", False), ("encode_length", None)):
            if not hasattr(session, attr):
                setattr(session, attr, default)
        return session

    def preload(self):
        fn = getattr(self.module, "preload", None)
        if fn:
            fn()

    def verify_structure(self, artifact):
        if not hasattr(self.module, "verify_structure"):
            return super().verify_structure(artifact)
        return self.module.verify_structure(artifact)

    def estimate(self, artifact, output_len):
        return self.module.estimate(artifact, output_len)

    def versions(self):
        return self.module.versions()
