"""`livemigrate`: the command line, modelled on `atlas liveMigrations`.

Every command loads the config, resolves secrets at the edge and calls the
engine or a flow; engine errors print one line and exit with a documented code
(0 ok, 1 a check/verification found a problem, 2 could not run).
"""

from __future__ import annotations

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
link_app = typer.Typer(
    help="Store connection strings as Prefect Secret blocks (like Atlas's link-token).", no_args_is_help=True
)
app.add_typer(link_app, name="link")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Migration config YAML file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"livemigrate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also log INFO lines to stderr: the engine's progress and Prefect's own lines (run created, "
            "states, tracebacks), which otherwise go only to the run's log.",
        ),
    ] = False,
) -> None:
    from flows.common import set_terminal_verbose

    set_terminal_verbose(verbose)
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
    ignore_field_order: Annotated[
        bool, typer.Option("--ignore-field-order", help="Report field-order-only differences separately.")
    ] = False,
) -> None:
    """Prove the destination equals the source: counts, hashes, indexes, options."""
    from flows.verify import verify_cli

    raise typer.Exit(verify_cli(config, as_json=as_json, report_dir=report, ignore_field_order=ignore_field_order))


NameOpt = Annotated[str | None, typer.Option("--name", help="Migration name (default: the config's, or the latest).")]


@app.command()
def migrate(
    config: ConfigOpt,
    restart: Annotated[bool, typer.Option("--restart", help="Start an ended migration of the same name over.")] = False,
    skip_prechecks: Annotated[bool, typer.Option("--skip-prechecks", help="Do not run the prechecks first.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write the final verification report here.")] = None,
) -> None:
    """Start (or resume) the migrate flow: prechecks, clone, sync, then wait for the cutover decision."""
    from flows.operate import migrate_cli

    raise typer.Exit(migrate_cli(config, restart=restart, skip_prechecks=skip_prechecks, report_dir=report))


@app.command()
def describe(config: ConfigOpt, as_json: JsonOpt = False, name: NameOpt = None) -> None:
    """Phase, lag, copy progress, cutover window left and last validation."""
    from flows.operate import describe_cli

    raise typer.Exit(describe_cli(config, as_json=as_json, name=name))


@app.command()
def watch(config: ConfigOpt, name: NameOpt = None) -> None:
    """Follow a migration with progress bars (clone per namespace, sync lag) until it ends; Ctrl-C stops watching."""
    from flows.console import watch_cli

    raise typer.Exit(watch_cli(config, name=name))


@app.command()
def report(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for migration-report.html and .md.")] = Path(
        "livemigrate-report"
    ),
    name: NameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the migration report: summary, decisions, copy-rate chart and lag-over-time chart."""
    from flows.console import report_cli

    raise typer.Exit(report_cli(config, out_dir=out, name=name, as_json=as_json))


@app.command()
def cutover(
    config: ConfigOpt,
    approver: Annotated[str | None, typer.Option("--approver", help="Who approves (default: $USER).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded with the decision.")] = "",
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
    full_verification: Annotated[
        bool,
        typer.Option(
            "--full-verification",
            help="Verify both clusters whole inside the window (longer downtime); also accepted while the "
            "continuous verification reports differences.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Approve the cutover of a migration that is ready (refused while the lag is too high)."""
    from flows.operate import decision_cli

    raise typer.Exit(
        decision_cli(
            config,
            "cutover",
            approver=approver,
            reason=reason,
            yes=yes,
            as_json=as_json,
            full_verification=full_verification,
        )
    )


@app.command()
def extend(
    config: ConfigOpt,
    approver: Annotated[str | None, typer.Option("--approver", help="Who decides (default: $USER).")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Extend the cutover window (24 hours by default)."""
    from flows.operate import decision_cli

    raise typer.Exit(decision_cli(config, "extend", approver=approver, reason=reason, yes=True, as_json=as_json))


@app.command()
def cancel(
    config: ConfigOpt,
    approver: Annotated[str | None, typer.Option("--approver", help="Who decides (default: $USER).")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Cancel: stop the sync, restart the source balancer, release the lock."""
    from flows.operate import decision_cli

    raise typer.Exit(decision_cli(config, "cancel", approver=approver, reason=reason, yes=True, as_json=as_json))


@app.command()
def rollback(
    config: ConfigOpt,
    approver: Annotated[str | None, typer.Option("--approver", help="Who approves (default: $USER).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded with the decision.")] = "",
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
    full_verification: Annotated[
        bool,
        typer.Option("--full-verification", help="Verify both clusters whole inside the window (longer downtime)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Roll a reversible migration back (refused while the reverse lag is too high): close the destination,
    drain the reverse sync, verify, reopen the source."""
    from flows.operate import decision_cli

    raise typer.Exit(
        decision_cli(
            config,
            "rollback",
            approver=approver,
            reason=reason,
            yes=yes,
            as_json=as_json,
            full_verification=full_verification,
        )
    )


@app.command()
def finish(
    config: ConfigOpt,
    approver: Annotated[str | None, typer.Option("--approver", help="Who decides (default: $USER).")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
    as_json: JsonOpt = False,
) -> None:
    """End a reversible migration's reverse sync for good: the source stays write-blocked and stops following."""
    from flows.operate import decision_cli

    raise typer.Exit(decision_cli(config, "finish", approver=approver, reason=reason, yes=True, as_json=as_json))


@app.command("clone-worker")
def clone_worker(
    config: ConfigOpt,
    workers: Annotated[int | None, typer.Option("--workers", help="Threads in this worker.")] = None,
) -> None:
    """Join a running migration's clone as an extra worker process."""
    from flows.operate import clone_worker_cli

    raise typer.Exit(clone_worker_cli(config, workers=workers))


LinkNameOpt = Annotated[
    str, typer.Option("--name", "-n", help="Link name (letters, digits, '-'); a config uses it as `link: NAME`.")
]


@link_app.command("create")
def link_create_cmd(
    name: LinkNameOpt,
    source_uri: Annotated[
        str,
        typer.Option(
            "--source-uri",
            envvar="LIVEMIGRATE_SOURCE_URI",
            prompt="Source URI",
            hide_input=True,
            show_default=False,
            help="mongodb:// or mongodb+srv:// URI of the source; prefer the env var or the prompt to keep it out of shell history.",
        ),
    ],
    dest_uri: Annotated[
        str,
        typer.Option(
            "--dest-uri",
            envvar="LIVEMIGRATE_DEST_URI",
            prompt="Destination URI",
            hide_input=True,
            show_default=False,
            help="mongodb:// or mongodb+srv:// URI of the destination (env var or prompt preferred).",
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing link (e.g. after a password rotation).")
    ] = False,
) -> None:
    """Save source and destination URIs as Prefect Secret blocks for configs that say `link: NAME`."""
    from flows.link import link_create_cli

    raise typer.Exit(link_create_cli(name, source_uri, dest_uri, overwrite))


@link_app.command("delete")
def link_delete_cmd(name: LinkNameOpt) -> None:
    """Delete a link's two Secret blocks (exit 2 when there is no such link)."""
    from flows.link import link_delete_cli

    raise typer.Exit(link_delete_cli(name))


def main() -> None:
    from flows.common import install_terminal_log

    install_terminal_log()
    app()


if __name__ == "__main__":
    main()
