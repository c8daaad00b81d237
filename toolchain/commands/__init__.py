"""The `edgeseq` subcommands, by what they work on. Each is a thin Click command: parse, call
the library, print. `toolchain.cli` owns the group (global flags, one-line errors, exit codes)
and adds these commands to it.

Modules here import only Click and light toolchain modules at import time; a command imports
what it runs inside its function, so `edgeseq --help` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click

# Options several commands share, word for word.
runner_option = click.option(
    "--runner", type=click.Choice(["python", "native"]),
    help="python: the runtime's Python Session (default); native: the C++ edgeseq-runner (`make runner`).")
device_option = click.option(
    "--device", help="Where the native runner executes: local (default) or qemu-aarch64 (emulated ARM64, "
                     "built by `make runner-aarch64`; implies --runner native).")

language_option = click.option(
    "--language", help="Whisper: the spoken language (en, english or <|en|>), as generate(language=...); "
                       "default: the generation config's, else detected from the audio (and reported).")
task_option = click.option(
    "--task", type=click.Choice(["transcribe", "translate"]),
    help="Whisper: transcribe, or translate to English, as generate(task=...); default: the generation config's.")


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print `data` as JSON (--json) or the human `text`."""
    click.echo(json.dumps(data, indent=1) if as_json else text)


def commands() -> list[click.Command]:
    """Every subcommand, for the group to add."""
    from . import artifacts, catalog, checkpoints, measure

    return [*checkpoints.COMMANDS, *artifacts.COMMANDS, *measure.COMMANDS, *catalog.COMMANDS]
