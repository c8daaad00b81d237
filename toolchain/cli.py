"""The `edgeseq` command line: thin. Parse, call the library, print.

This module is the group: global flags (also accepted after the subcommand), one-line errors
and exit codes. The subcommands live in `toolchain.commands`, by what they work on.

Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from typing import Any

import click

from . import interrupts, logs, progress
from .commands import commands
from .errors import CheckFailed, InputError


def _quiet() -> None:
    """Third-party import noise (torchao's optional CUDA kernels, deprecations) is not for users."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)


# OS errors that are about the machine, not a bug: disk full, read-only or forbidden paths.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _one_line(message: object) -> str:
    return " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())


# Options of the group that may also be written after the subcommand (`edgeseq run A x --debug`).
GLOBAL_FLAGS = ("--debug", "--quiet", "--verbose")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class Group(click.Group):
    """Turns library errors into one line on stderr: `error: ...` exit 2 (bad input, usage, a full
    or read-only disk), `check failed: ...` exit 1, Ctrl-C exit 130. `--debug` shows the
    traceback instead."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Global flags are accepted anywhere before a `--`: hoisted in front of the subcommand."""
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        return super().parse_args(ctx, flags + rest)

    def invoke(self, ctx: click.Context) -> Any:
        debug = ctx.params.get("debug")
        # SIGTERM unwinds like Ctrl-C (an export's staging dir is removed), exit status 128+15;
        # both are recorded, so one swallowed on its way up still stops the commit (interrupts.py).
        interrupts.install()
        ctx.call_on_close(interrupts.uninstall)
        try:
            return super().invoke(ctx)
        except InputError as e:
            if debug:
                raise
            progress.clear()
            click.echo(f"error: {_one_line(e)}", err=True)
            ctx.exit(2)
        except click.UsageError as e:  # one line, with where to look, instead of Click's usage block
            if debug:
                raise
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {_one_line(e.format_message())} (see: {where} --help)", err=True)
            ctx.exit(2)
        except OSError as e:
            if debug or e.errno not in RESOURCE_ERRNOS:
                raise
            click.echo(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror}", err=True)
            ctx.exit(2)
        except CheckFailed as e:
            progress.clear()
            click.echo(f"check failed: {_one_line(e)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if debug:
                raise
            progress.clear()
            click.echo("interrupted (nothing half-written was left)", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (also after the command).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr (errors still print).")
@click.option("--verbose", is_flag=True,
              help="Let the runtimes' own log lines (ExecuTorch's C++ cpuinfo lines, LiteRT's INFO) reach stderr.")
@click.version_option(package_name="edgeseq")
def main(debug: bool, quiet: bool, verbose: bool) -> None:
    """Export trained encoder-decoder transformers to on-device encode/decode programs,
    verify them against eager PyTorch, and measure them.

    \b
    Example:
      edgeseq export demo/date-t5 -t executorch-xnnpack -r fp32 -o build/a
      edgeseq verify build/a
      edgeseq run build/a "the 3rd of March, 2021"
    """
    if not debug:
        _quiet()
    progress.configure(quiet=quiet)
    # Library calls after this command (tests, an embedding program) print nothing again.
    click.get_current_context().call_on_close(lambda: progress.configure(quiet=True))
    logs.set_verbose(verbose)


for _command in commands():
    main.add_command(_command)


if __name__ == "__main__":
    sys.exit(main())
