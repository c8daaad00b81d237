"""edgeseq: export encoder-decoder transformers to on-device encode/decode programs.

The Python API (the same work as the `edgeseq` commands; see `toolchain.api`):

    import edgeseq
    art = edgeseq.export("demo/date-t5", target="executorch-xnnpack", recipe="fp32", output="build/a")
    edgeseq.verify("build/a")["passed"]
    edgeseq.run("build/a", "the 3rd of March, 2021")   # '2021-03-03'
    edgeseq.probe("build/a", runs=10)["decode_ms_per_token"]
"""

from toolchain import __version__, progress
from toolchain.api import export, probe, run, verify
from toolchain.artifact import Artifact, open_artifact
from toolchain.errors import CheckFailed, InputError

__all__ = ["Artifact", "CheckFailed", "InputError", "__version__", "export", "open_artifact", "probe",
           "progress", "run", "verify"]
