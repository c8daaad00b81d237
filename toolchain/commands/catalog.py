"""Commands that list what ships: recipes and targets."""

from __future__ import annotations

import click

from . import emit


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recipes(as_json: bool) -> None:
    """List the shipped recipes, one line each.

    Example: edgeseq recipes
    """
    from ..specs import RECIPE_DIR, available, load_recipe

    items = [load_recipe(n) for n in available(RECIPE_DIR)]
    emit([r.to_dict() for r in items], as_json,
         "\n".join(f"{r.name:<12} in<={r.max_input_len:<5} out<={r.max_output_len:<5} {r.description}" for r in items))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def targets(as_json: bool) -> None:
    """List the shipped targets, one line each.

    Example: edgeseq targets
    """
    from ..specs import TARGET_DIR, available, load_target

    items = [load_target(n) for n in available(TARGET_DIR)]
    emit([t.to_dict() for t in items], as_json,
         "\n".join(f"{t.name:<22} {t.runtime}/{t.backend:<10} {t.device_class:<6} "
                   f"{'(experimental) ' if t.experimental else ''}{t.description}" for t in items))


COMMANDS = [recipes, targets]
