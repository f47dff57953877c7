"""Start the ``migrate`` deployment with a reviewed config and wait until the run is really migrating.

Why: ``prefect deployment run`` returns as soon as the flow run exists, so a CI job
that starts a migration whose prechecks fail 15 s later stays green.  This script
creates the run and follows it until it reaches the stage asked for, and fails
otherwise.  It also makes the config the reviewers approved the one the worker
reads: the YAML file is read from this checkout and passed *inline* as the
``config`` parameter (a mapping), never as a path that the worker would resolve in
its own checkout; its sha256 is printed, tagged on the run and written to the job
summary.

It needs only the Prefect client and PyYAML (a Prefect dependency), so a CI job can
run it after ``pip install prefect==3.9.1`` without installing livemigrate:

    python deployments/start_run.py --config migrations/orders.yaml --until sync --timeout 3600

``--until``:

- ``clone``: the ``prechecks`` task passed (or was skipped on a resume) and the
  ``clone`` task started;
- ``sync`` (default): the ``wait-until-ready`` task started, i.e. the clone is done
  and the change-stream sync runs (or the run is already Paused);
- ``paused``: the run is Paused at the cutover form (lag under ``cutover.max_lag_seconds``).

Exit codes:

- 0: the run reached the stage;
- 1: it did not: the run ended (Failed, Crashed, Cancelled, or Completed) before it,
  a stage task failed (``prechecks failed: ...``), ``--timeout`` passed first (the
  run keeps going), or the Prefect API stopped answering while waiting; one line on stderr names the flow run, its state and the state message;
- 2: nothing was started: the config was refused (a URI or password in it, no
  ``secret:``/``link``, not a mapping), bad usage, the deployment or the Prefect API
  could not be reached;
- 130: interrupted while waiting (the flow run keeps going).

The config rule mirrors the flow's (``flows/common.py: config_param`` validates a
mapping like a file, ``tasks/config.py``): each endpoint names a ``secret:`` block or
the config a top-level ``link``; here no ``uri`` (nor Atlas private key, nor any
``mongodb://`` string) is accepted, because a parameter is stored and shown by Prefect.
The script does not import livemigrate, so it repeats that rule instead of calling it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROG = "start_run"
DEPLOYMENT = "migrate/migrate"
# The migrate flow's stage tasks, in the order they run (flows/migrate.py).
STAGES = ("prechecks", "begin", "clone", "wait-until-ready", "cutover")
UNTIL_TASK = {"clone": "clone", "sync": "wait-until-ready", "paused": None}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
STARTED = {"RUNNING", "COMPLETED"}
TASK_FAILED = {"FAILED", "CRASHED"}
FAILED_TASK_GRACE_SECONDS = 10.0  # after a stage task failed, how long to wait for the run's own final state
MAX_POLL_ERRORS = 5
_URI_RE = re.compile(r"mongodb(\+srv)?://", re.IGNORECASE)
_TASK_NAME_RE = re.compile(r"^(?P<stage>.+?)(-[0-9a-f]+)?$")  # Prefect names task runs "<task>-<key>"

EXIT_OK, EXIT_NOT_REACHED, EXIT_CANNOT_START, EXIT_INTERRUPTED = 0, 1, 2, 130


class NotStartedError(Exception):
    """The run was not started (exit 2); the message is the one line to print."""


@dataclass(frozen=True)
class Approved:
    """The config as reviewed: its path, the sha256 of the file's bytes and the mapping sent to the worker."""

    path: Path
    sha256: str
    mapping: dict[str, Any]


# -- the config ------------------------------------------------------------------------------------------


def _strings(value: Any, where: str) -> Iterable[tuple[str, str]]:
    """Every string in a YAML value with its field path (keys included), to look for URIs anywhere."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            yield path, str(k)
            yield from _strings(v, path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def check_config(data: Any, source: str) -> dict[str, Any]:
    """Refuse a config that cannot be a flow-run parameter; return the mapping to send.

    The worker validates the whole model again (``tasks/config.py``); this checks
    only what must never leave the repository, and what the flow needs to find its
    URIs without one.  Messages name the field, never a value.
    """
    if not isinstance(data, dict):
        raise NotStartedError(f"{source}: the top level must be a mapping of settings")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise NotStartedError(f"{source}: name: required (the migration's name)")
    link = data.get("link")
    for side in ("source", "destination"):
        ep = data.get(side) or {}
        if not isinstance(ep, dict):
            raise NotStartedError(f"{source}: {side}: must be a mapping")
        if ep.get("uri") is not None:
            raise NotStartedError(
                f"{source}: {side}.uri: a URI would be stored as a flow-run parameter; "
                f"use `secret: <block>` on {side} or a top-level `link:` (livemigrate link create)"
            )
        atlas = ep.get("atlas") or {}
        if isinstance(atlas, dict) and atlas.get("api_private_key") is not None:
            raise NotStartedError(
                f"{source}: {side}.atlas.api_private_key: a key would be stored as a flow-run parameter; "
                "use `api_key_secret: <block>`"
            )
        if ep.get("secret") is None and link is None:
            raise NotStartedError(f"{source}: {side}: name a `secret: <block>` or give the config a top-level `link:`")
    for where, text in _strings(data, ""):
        if _URI_RE.search(text):
            raise NotStartedError(f"{source}: {where}: contains a connection URI; keep URIs in Prefect Secret blocks")
    try:
        json.dumps(data)
    except (TypeError, ValueError):
        raise NotStartedError(f"{source}: holds values that are not plain YAML scalars (dates?); quote them") from None
    return data


def read_config(path: Path) -> Approved:
    """Read the reviewed YAML file from this checkout; every failure is one ``NotStartedError`` line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotStartedError(f"{path}: config file not found in this checkout") from None
    except OSError as exc:
        raise NotStartedError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise NotStartedError(
            f"{path}:{where}: invalid YAML: {getattr(exc, 'problem', None) or 'parse error'}"
        ) from None
    return Approved(path, hashlib.sha256(raw).hexdigest(), check_config(data, str(path)))


# -- the run ---------------------------------------------------------------------------------------------


def stage_of(task_run_name: str) -> str | None:
    """The migrate stage a task run belongs to (``prechecks-0`` -> ``prechecks``), or None."""
    if task_run_name in STAGES:
        return task_run_name
    m = _TASK_NAME_RE.match(task_run_name)
    return m.group("stage") if m and m.group("stage") in STAGES else None


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw: the flow run's state and each stage task's state."""

    state_type: str
    state_name: str
    message: str
    tasks: tuple[tuple[str, str, str, str], ...]  # (stage, state type, state name, message)


@dataclass(frozen=True)
class Verdict:
    """What one poll means: ``reached``, ``ended`` (the run is over), ``task-failed`` or ``waiting``."""

    kind: str
    line: str = ""


def judge(snap: Snapshot, until: str) -> Verdict:
    """The whole policy, on one poll's facts."""
    if snap.state_type == "PAUSED":
        return Verdict("reached", f"reached {until}: the run is {snap.state_name} (waiting for the cutover decision)")
    target = UNTIL_TASK[until]
    if target is not None:
        first = STAGES.index(target)
        for stage, st_type, st_name, _ in snap.tasks:
            if STAGES.index(stage) >= first and st_type in STARTED:
                return Verdict("reached", f"reached {until}: task {stage} is {st_name}")
    failed = [f"task {stage} {st_name}: {msg}" for stage, st_type, st_name, msg in snap.tasks if st_type in TASK_FAILED]
    if snap.state_type in TERMINAL:
        why = snap.message or (failed[0] if failed else "no message")
        return Verdict("ended", f"ended {snap.state_name} before reaching {until}: {why}")
    if failed:
        return Verdict("task-failed", f"{failed[0]} (the run is still {snap.state_name})")
    return Verdict("waiting")


def _one_line(text: str | None, limit: int = 400) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Watcher:
    """Reads a flow run and its stage task runs through the Prefect client."""

    def __init__(self, client: Any, flow_run_id: Any) -> None:
        self.client = client
        self.flow_run_id = flow_run_id

    def snapshot(self) -> Snapshot:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        fr = self.client.read_flow_run(self.flow_run_id)
        runs = self.client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[self.flow_run_id]))
        )
        tasks = []
        for tr in runs:
            stage = stage_of(tr.name)
            if stage is not None and tr.state is not None:
                tasks.append((stage, tr.state.type.value, tr.state.name, _one_line(tr.state.message)))
        tasks.sort(key=lambda t: STAGES.index(t[0]))
        st = fr.state
        return Snapshot(
            st.type.value if st else "PENDING",
            st.name if st else "Pending",
            _one_line(st.message if st else ""),
            tuple(tasks),
        )


def wait_for(
    snapshot: Callable[[], Snapshot],
    until: str,
    timeout: float,
    poll: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, str]:
    """Poll until the run reaches ``until``, ends, or ``timeout`` passes: (exit code, one line).

    Each new state of the run and of its stage tasks is printed once, as a log of the start.
    """
    start = clock()
    seen: set[tuple[str, str]] = set()
    errors = 0
    task_failed_at: float | None = None
    while True:
        try:
            snap = snapshot()
            errors = 0
        except Exception as exc:  # noqa: BLE001 - the API may blink; give up after a few errors in a row
            errors += 1
            if errors >= MAX_POLL_ERRORS:
                why = f"{type(exc).__name__}: {_one_line(str(exc), 200)}"
                return EXIT_NOT_REACHED, f"lost the Prefect API ({why}); the run's outcome is unknown"
            time.sleep(poll)
            continue
        for key in [("flow run", snap.state_name), *((f"task {s}", n) for s, _, n, _ in snap.tasks)]:
            if key not in seen:
                seen.add(key)
                say(f"{key[0]}: {key[1]}")
        verdict = judge(snap, until)
        now = clock()
        if verdict.kind == "reached":
            return EXIT_OK, verdict.line
        if verdict.kind == "ended":
            return EXIT_NOT_REACHED, verdict.line
        if verdict.kind == "task-failed":
            # The flow run fails right after its stage task; wait a little to report the run's own final state.
            task_failed_at = now if task_failed_at is None else task_failed_at
            if now - task_failed_at >= FAILED_TASK_GRACE_SECONDS:
                return EXIT_NOT_REACHED, verdict.line
        if now - start >= timeout:
            idle = snap.state_type in ("SCHEDULED", "PENDING")
            hint = " (no worker has picked it up: is one polling the deployment's work pool?)" if idle else ""
            return (
                EXIT_NOT_REACHED,
                f"timed out after {timeout:g} s waiting for {until}: the run is {snap.state_name}{hint}; it keeps going",
            )
        time.sleep(poll)


# -- the command -----------------------------------------------------------------------------------------


def _append(env_var: str, text: str) -> None:
    """Append to the file GitHub Actions names in ``env_var`` (job summary, step outputs), when set."""
    target = os.environ.get(env_var)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)


def _ui_url(flow_run_id: Any) -> str:
    from prefect.settings import get_current_settings
    from prefect.utilities.urls import url_for

    url = url_for("flow-run", obj_id=flow_run_id)
    return url or f"{get_current_settings().api.url}/flow_runs/{flow_run_id}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python deployments/start_run.py",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="exit codes: 0 reached, 1 failed or timed out, 2 not started, 130 interrupted",
    )
    parser.add_argument("--config", required=True, type=Path, help="migration YAML in this checkout (sent inline)")
    parser.add_argument("--until", choices=sorted(UNTIL_TASK), default="sync", help="stage to wait for (sync)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for it (3600)")
    parser.add_argument("--restart", action="store_true", help="discard the stored migration and start again")
    parser.add_argument("--tag", action="append", default=[], help="tag for the flow run (repeatable)")
    parser.add_argument("--deployment", default=DEPLOYMENT, help="deployment to run (%(default)s)")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between polls (5)")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.poll_interval <= 0:
        parser.error("--timeout and --poll-interval must be positive")
    return args


def start(approved: Approved, args: argparse.Namespace) -> int:
    """Create the flow run, report where it is, follow it; returns the exit code."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    def say(line: str) -> None:
        print(f"{PROG}: {line}", flush=True)

    tags = [*args.tag, f"config-sha256:{approved.sha256[:16]}"]
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(args.deployment)
        except ObjectNotFound:
            raise NotStartedError(
                f"deployment {args.deployment!r} not found on {client.api_url} (run `python -m deployments.register`)"
            ) from None
        try:
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"config": approved.mapping, "restart": bool(args.restart)},
                tags=tags,
            )
        except PrefectHTTPStatusError as exc:
            detail = _one_line(exc.response.text, 200)
            raise NotStartedError(f"the server refused the flow run ({exc.response.status_code}): {detail}") from None
        url = _ui_url(run.id)
        say(f"flow run {run.name} ({run.id}) of {args.deployment}: {url}")
        _append("GITHUB_OUTPUT", f"flow_run_id={run.id}\nflow_run_url={url}\nconfig_sha256={approved.sha256}\n")
        _append(
            "GITHUB_STEP_SUMMARY",
            f"### Migration started: `{approved.mapping['name']}`\n\n"
            f"| | |\n|---|---|\n| config | `{approved.path}` |\n| config sha256 | `{approved.sha256}` |\n"
            + (f"| commit | `{os.environ['GITHUB_SHA']}` |\n" if os.environ.get("GITHUB_SHA") else "")
            + f"| restart | {bool(args.restart)} |\n| flow run | [{run.name}]({url}) `{run.id}` |\n"
            f"| waiting for | {args.until} (at most {args.timeout:g} s) |\n\n",
        )
        say(f"waiting for {args.until} (at most {args.timeout:g} s)")
        try:
            code, why = wait_for(Watcher(client, run.id).snapshot, args.until, args.timeout, args.poll_interval, say)
        except KeyboardInterrupt:
            code, why = EXIT_INTERRUPTED, "interrupted while waiting; the run keeps going"
    line = f"flow run {run.name} ({run.id}): {why}"
    _append("GITHUB_STEP_SUMMARY", f"**{'Reached' if code == EXIT_OK else 'Not reached'}:** {line}\n")
    if code == EXIT_OK:
        say(line)
    else:
        print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        approved = read_config(args.config)
        print(f"{PROG}: config {approved.path} sha256 {approved.sha256}", flush=True)
        return start(approved, args)
    except NotStartedError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the API unreachable, a bad API key: one line, no traceback
        print(f"{PROG}: error: cannot start the run: {type(exc).__name__}: {_one_line(str(exc), 200)}", file=sys.stderr)
        return EXIT_CANNOT_START


if __name__ == "__main__":
    sys.exit(main())
