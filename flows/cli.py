"""`livemigrate`: the command line, modelled on `atlas liveMigrations`.

Every command loads the config, resolves secrets at the edge and calls the
engine or a flow; engine errors print one line and exit with a documented code
(0 ok, 1 a check/verification found a problem, 2 could not run).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from tasks import __version__

app = typer.Typer(
    name="livemigrate",
    help="Self-hosted live migration for MongoDB: validate, migrate, describe, cut over, verify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
link_app = typer.Typer(help="Store connection strings as Prefect Secret blocks (like Atlas's link-token).", no_args_is_help=True)
app.add_typer(link_app, name="link")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Migration config YAML file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"livemigrate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log engine progress to stderr.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


@app.command()
def validate(config: ConfigOpt, as_json: JsonOpt = False) -> None:
    """Run the prechecks on source and destination and print the report."""
    from flows.prechecks import validate_cli

    raise typer.Exit(validate_cli(config, as_json=as_json))


@app.command()
def verify(
    config: ConfigOpt,
    as_json: JsonOpt = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write Data Docs HTML and JSON here.")] = None,
    ignore_field_order: Annotated[bool, typer.Option("--ignore-field-order", help="Report field-order-only differences separately.")] = False,
) -> None:
    """Prove the destination equals the source: counts, hashes, indexes, options."""
    from flows.verify import verify_cli

    raise typer.Exit(verify_cli(config, as_json=as_json, report_dir=report, ignore_field_order=ignore_field_order))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
