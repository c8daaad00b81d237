"""One benchmark row in its own process, driven over stdin/stdout by compare.py.

    PYTHON benchmarks/worker.py '{"kind": "edgeseq", "path": "...", ...}'

PYTHON is the main venv's for edgeseq, eager and decoder-only rows, a peer venv's for
optimum and CTranslate2 rows. The worker loads its runner, answers {"ready": ...} (or {"error": ...}),
then for each line on stdin: "run" -> one generation, {"ttft": s, "steps": [s, ...]};
"rss" -> {"peak_rss_mb": ...} (this process's peak: runtime + model + buffers);
"quit" -> exits. Timing happens here, inside the process that runs the model, so the
pipe costs nothing that is measured. Library output goes to stderr; the protocol owns
the real stdout.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_runner(spec: dict):
    kind, threads = spec["kind"], spec.get("threads", 2)
    if kind == "eager":
        from common import EagerRunner

        return EagerRunner(Path(spec["checkpoint"]), int8=spec["int8"], input_len=spec["input_len"],
                           output_len=spec["output_len"], threads=threads)
    if kind == "edgeseq":
        from common import ArtifactRunner

        return ArtifactRunner(Path(spec["path"]), threads=threads, input_len=spec["input_len"],
                              output_len=spec["output_len"])
    if kind == "decoder-only":
        from decoder_only import DecoderOnlyRunner

        return DecoderOnlyRunner(Path(spec["path"]), spec["output_len"], threads=threads)
    if kind == "optimum-onnx":
        from peers import OptimumOnnxRunner

        return OptimumOnnxRunner(Path(spec["path"]), spec["input_len"], spec["output_len"], threads=threads)
    if kind == "optimum-executorch":
        from peers import OptimumExecuTorchRunner

        return OptimumExecuTorchRunner(Path(spec["path"]), spec["input_len"], spec["output_len"], threads=threads)
    if kind == "ctranslate2":
        from peers import CTranslate2Runner

        return CTranslate2Runner(Path(spec["path"]), spec["input_len"], spec["output_len"], threads=threads)
    raise ValueError(f"unknown row kind {kind!r}")


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec,
    so a worker would report its parent's peak if that was larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    spec = json.loads(sys.argv[1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by a library lands on stderr, not in the protocol
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        runner = make_runner(spec)
    except Exception as e:  # the row says why, the benchmark goes on
        send({"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]})
        return 1
    send({"ready": True, "mb": runner.mb, "prep_s": getattr(runner, "prep_s", None)})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            ttft, steps = runner.once()
            send({"ttft": ttft, "steps": steps})
        elif cmd == "rss":
            send({"peak_rss_mb": peak_rss_mb()})
        elif cmd == "quit":
            break
    proto.flush()
    # No interpreter teardown: runtime thread pools (seen with ExecuTorch's) can spin for
    # a long time in their destructors at exit, and there is nothing left to clean up.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
