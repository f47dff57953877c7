"""One rendering of a migration's status (``describe``'s output) for the pause form and the artifacts.

Why: the on-call engineer reads the same facts in the form, the live ``<name>-status``
artifact, the ``ready`` and ``outcome`` artifacts; each used to format its own
snapshot, and they contradicted each other ("window not open yet" on a run paused
because it was ready).  Every figure here says when it was true (UTC) and what
rule it is measured against.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from checks.prechecks.data import human_bytes as _bytes

TERMINAL_PHASES = ("complete", "cancelled", "expired", "finished", "failed")


def utc_text(value: str | dt.datetime | None) -> str:
    """A timestamp as ``2026-12-01 03:50:12 UTC`` (stored datetimes are UTC, some without a zone)."""
    if value is None:
        return "-"
    try:
        t = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        return str(value)  # not a timestamp: shown as it is
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_bytes(n: float | int | None) -> str:
    """Sizes as the prechecks write them ('3.4 MB'); '-' when unknown."""
    return "-" if n is None else _bytes(float(n))


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def readiness(d: dict[str, Any], rules: dict[str, float] | None) -> str:
    """``yes: lag 0.0 s <= 10 s, held for the required 5 s`` or why not."""
    lag = d["lag"].get("lag_seconds")
    if d["phase"] in TERMINAL_PHASES or d["phase"] == "cutting_over":
        return f"not applicable ({d['phase']})"
    if lag is None:
        return "no: the lag is not measured yet"
    if not rules:
        return f"{'yes' if d.get('ready_to_cut_over') else 'no'} (lag {lag:.1f} s)"
    if d.get("ready_to_cut_over"):
        return f"yes: lag {lag:.1f} s <= {rules['max_lag_seconds']:g} s, held for the required {rules['ready_after_seconds']:g} s"
    if lag > rules["max_lag_seconds"]:
        return f"no: lag {lag:.1f} s > {rules['max_lag_seconds']:g} s"
    return f"no: lag {lag:.1f} s <= {rules['max_lag_seconds']:g} s, not yet held for {rules['ready_after_seconds']:g} s"


def latest_write(d: dict[str, Any], now: dt.datetime) -> str:
    """How long ago the latest change event the sync applied was written on the source."""
    t = d["lag"].get("last_event_time")
    if t is None:
        return "no change event applied since the sync started"
    age = max(0.0, now.timestamp() - t)
    arriving = "writes still arriving" if age < 10 else "no write since"
    return f"{human_seconds(age)} ago ({arriving}; cluster time {utc_text(dt.datetime.fromtimestamp(t, dt.UTC))})"


def _destination_writes(state: str) -> str:
    if state == "blocked":
        return "blocked (setUserWriteBlockMode) until the destination is ready"
    if state == "unblocked":
        return "allowed again since the destination was ready"
    if state.startswith("watched: "):
        return f"not blocked ({state[9:]}); watched: one is reported as a difference"
    return state


def _source_writes(state: str, phase: str) -> str:
    if phase == "complete":
        return "open again since the rollback"
    if state == "blocked":
        return "blocked (setUserWriteBlockMode) until a rollback reopens the source"
    return state


def _lag_text(lag: float | None) -> str:
    return "not measured yet" if lag is None else f"{lag:g} s"


def window(d: dict[str, Any]) -> str:
    win = d["window"]
    if d["phase"] in TERMINAL_PHASES:
        return f"closed ({d['phase']})"
    if win.get("closes_at") is None:
        return "opens when the sync is first ready"
    left = win.get("seconds_left")
    return (
        f"closes {utc_text(win['closes_at'])} ({human_seconds(max(0.0, left or 0.0))} left;"
        f" extensions: {win.get('extensions')})"
    )


def status_rows(
    d: dict[str, Any], rules: dict[str, float] | None = None, now: dt.datetime | None = None
) -> list[tuple[str, str]]:
    """The status as (label, text) rows: what every view shows (form, artifacts, `describe`).

    Once data flows back (``shown_reverse``) the reverse sync's rows come first, under the direction, then the
    forward migration's rows as before, then the history of both; a reverse record described on its own
    shows only its rows and the history.
    """
    now = now or dt.datetime.now(dt.UTC)
    if d.get("reverse_of"):
        fwd = d.get("forward") or {}
        return [("Direction", direction_text(d["direction"], d)), *reverse_rows(d, rules, now, fwd), *history_rows(d)]
    rows = _forward_rows(d, rules, now)
    rev = shown_reverse(d)
    if rev:
        warnings = [("Reverse sync warning", str(w)) for w in rev.get("warnings") or []]
        rows = [("Direction", direction_text(d["direction"], rev)), *reverse_rows(rev, rules, now), *warnings, *rows]
        rows += history_rows(d)
    return rows


def _forward_rows(d: dict[str, Any], rules: dict[str, float] | None, now: dt.datetime) -> list[tuple[str, str]]:
    lag = d["lag"]
    clone = d["clone"]
    catch_up = lag.get("catch_up_seconds")
    rows = [
        ("Ready to cut over", readiness(d, rules)),
        (
            "Lag (optime gap)",
            f"{_lag_text(lag.get('lag_seconds'))}, {lag.get('events_per_second')} events/s applied,"
            f" {lag.get('applied_events')} events in all"
            + (f"; catch-up in about {human_seconds(catch_up)}" if catch_up else ""),
        ),
        ("Latest write on the source", latest_write(d, now)),
        (
            "Copied",
            f"{clone['docs']} documents, {human_bytes(clone['bytes'])} in"
            f" {clone['partitions_done']}/{clone['partitions']} partitions",
        ),
        ("Cutover window", window(d)),
        ("Source -> destination", f"{d['source']} -> {d['destination']}"),
    ]
    dest = d.get("destination_writes")
    if dest:
        rows.append(("Writes by others on the destination", _destination_writes(dest)))
    rows += verification_rows(d)
    if d.get("destination_ready_at"):
        rows.append(("Destination ready to accept writes", utc_text(d["destination_ready_at"])))
    if d.get("completed_at"):
        rows.append(("Finished", utc_text(d["completed_at"])))
    if d.get("error"):
        rows.append(("Error", str(d["error"])))
    return rows


def shown_reverse(d: dict[str, Any]) -> dict[str, Any] | None:
    """describe()'s ``reverse`` section once the data flows back (the forward cutover is complete), else None.

    The reverse record exists from the moment the cutover captured the destination's start point, so during
    the forward cutover (and after one that failed) it is there but nothing flows back: the views leave it out.
    """
    rev = d.get("reverse")
    return rev if rev is not None and d.get("direction", "forward") != "forward" else None


def status_title(d: dict[str, Any]) -> str:
    """``orders: syncing``; once a reverse sync exists ``orders: complete, reverse sync syncing (direction: reverse)``."""
    if d.get("reverse_of"):
        return f"{d['name']}: {d['phase']} (reverse sync of {d['reverse_of']})"
    rev = shown_reverse(d)
    if not rev:
        return f"{d['name']}: {d['phase']}"
    return f"{d['name']}: {d['phase']}, reverse sync {rev['phase']} (direction: {d['direction']})"


def direction_text(direction: str, rev: dict[str, Any]) -> str:
    """Which way the data flows and what ends the reverse sync."""
    if direction == "reverse":
        state = {
            "syncing": "the reverse sync keeps the source up to date; approve a rollback or finish it",
            "cutting_over": "rolling back: the source is being reopened to the application",
        }.get(rev["phase"], f"the reverse sync is {rev['phase']}")
        return f"reverse (destination → source): {state}"
    if direction == "rolled back":
        return "rolled back: the application writes to the source again"
    if direction == "finished":
        return "finished: the reverse sync ended for good; the destination is the application's cluster"
    return "forward (source → destination)"


def reverse_rows(
    rev: dict[str, Any], rules: dict[str, float] | None, now: dt.datetime, forward: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """The reverse sync's rows: rollback readiness, reverse lag, window, and both moments after a rollback.

    ``rev`` is describe()'s ``reverse`` section, or a reverse record's own description (same keys);
    ``forward``, for a reverse record shown on its own, holds the forward cutover's moments (the forward
    rows say them otherwise).
    """
    lag = rev["lag"]
    catch_up = lag.get("catch_up_seconds")
    ready = readiness({**rev, "ready_to_cut_over": rev.get("ready_to_roll_back")}, rules)
    rows = [
        ("Ready to roll back", ready),
        (
            "Reverse lag (destination → source)",
            f"{_lag_text(lag.get('lag_seconds'))}, {lag.get('events_per_second')} events/s applied,"
            f" {lag.get('applied_events')} events in all"
            + (f"; catch-up in about {human_seconds(catch_up)}" if catch_up else ""),
        ),
        ("Latest write on the destination", latest_write(rev, now)),
        ("Rollback window", window(rev)),
    ]
    if forward is not None:
        rows.append(("Destination -> source", f"{rev['source']} -> {rev['destination']}"))
    if rev.get("source_writes"):
        rows.append(("Application writes on the source", _source_writes(rev["source_writes"], rev["phase"])))
    relabel = {
        "Verified during the sync": "Verified during the reverse sync",
        "Differences": "Differences on the source",
        "Downtime estimate": "Rollback downtime estimate",
        "Downtime": "Rollback downtime",
    }
    rows += [(relabel.get(label, label), text) for label, text in verification_rows(rev)]
    if rev.get("source_reopened_at"):
        if forward and forward.get("destination_ready_at"):
            rows.append(("Destination ready (forward cutover)", utc_text(forward["destination_ready_at"])))
        rows.append(("Source reopened to the application (rollback)", utc_text(rev["source_reopened_at"])))
    if rev.get("completed_at"):
        label = {"complete": "Rolled back", "finished": "Reverse sync finished"}.get(rev["phase"], "Reverse sync ended")
        rows.append((label, utc_text(rev["completed_at"])))
    if rev.get("error"):
        rows.append(("Reverse sync error", str(rev["error"])))
    return rows


def history_rows(d: dict[str, Any], limit: int = 20) -> list[tuple[str, str]]:
    """describe()'s ``history`` (both records' decisions, oldest first) as rows; the latest ``limit`` of them."""
    events = d.get("history") or []
    rows = [("History", f"{len(events)} decisions" + (f", the latest {limit}:" if len(events) > limit else ":"))]
    for e in events[-limit:]:
        why = f" ({e['reason']})" if e.get("reason") else ""
        rows.append(("  decision", f"{utc_text(e['at'])}: {e['event']} by {e['approver'] or '(unnamed)'}{why}"))
    return rows


def status_markdown(d: dict[str, Any], rules: dict[str, float] | None = None, now: dt.datetime | None = None) -> str:
    """The status as markdown, as of ``now`` (UTC): readiness, writes, copy, window, verification."""
    now = now or dt.datetime.now(dt.UTC)
    name, _, rest = status_title(d).partition(": ")
    lines = [f"### Migration `{name}`: {rest}", "", f"_As of {utc_text(now)}._", ""]
    for label, text in status_rows(d, rules, now):
        if label.startswith("  "):
            lines.append(f"  - {text}")
        else:
            lines.append(f"- **{label}:** {text}")
    if d.get("warnings"):
        lines += ["", "**Warnings:**"] + [f"- {w}" for w in d["warnings"]]
    return "\n".join(lines)


def namespace_table(d: dict[str, Any], limit: int = 200) -> str:
    """Copy progress per namespace (the table docs/deployments.md promises)."""
    rows = sorted(d["clone"]["namespaces"].items())
    if not rows:
        return ""
    out = [
        "| namespace | documents copied | size | partitions done |",
        "|---|---:|---:|---:|",
    ]
    for ns, v in rows[:limit]:
        out.append(f"| `{ns}` | {v['docs']} | {human_bytes(v['bytes'])} | {v['done']}/{v['partitions']} |")
    if len(rows) > limit:
        out.append(f"| ... {len(rows) - limit} more | | | |")
    return "\n".join(out)


def live_status_markdown(d: dict[str, Any], rules: dict[str, float] | None, every: float) -> str:
    """The live ``<name>-status`` artifact: the status, then copy per namespace."""
    table = namespace_table(d)
    return (
        status_markdown(d, rules)
        + f"\n\n_This artifact is rewritten every {every:g} s while the run lives; its time is above._"
        + (f"\n\n#### Copy per namespace\n\n{table}" if table else "")
    )


def verification_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The background verification and the downtime (estimated before, measured after the cutover)."""
    rows: list[tuple[str, str]] = []
    cv = d.get("continuous_verification")
    if cv:
        rows.append(
            (
                "Verified during the sync",
                f"{cv.get('partitions_proven')}/{cv.get('partitions')} partitions ({cv.get('docs_proven')} documents),"
                f" {cv.get('dirty_documents')} changed since, to re-read at the cutover",
            )
        )
        if cv.get("differences"):
            rows.append(
                ("Differences", f"{cv['differences']} (cutover refused until resolved, or choose a full verification)")
            )
            rows += [("  differs", f"`{x['ns']}` _id `{x['_id']}` ({x['kind']})") for x in cv.get("differing", [])[:10]]
        if cv.get("error"):
            rows.append(("Verification paused", str(cv["error"])))
    est = d.get("downtime_estimate")
    if est and not d.get("downtime"):
        parts = ", ".join(f"{k} {v:g} s" for k, v in est["parts"].items())
        rows.append(("Downtime estimate", f"{est['seconds']:g} s ({parts}; {est['final_verification']} verification)"))
    done = d.get("downtime")
    if done:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in done["parts"].items())
        rows.append(("Downtime", f"{done['seconds']:.2f} s ({parts}; {done.get('final_verification')} verification)"))
    return rows


def cutover_plan_markdown(
    *,
    blocks: bool,
    how: str,
    drain_timeout: float,
    final_verification: str,
    restores: list[dict[str, Any]],
    destination_writes: str | None = None,
) -> str:
    """What an approved cutover will do on these clusters (the form states the risk before the click)."""
    uniq = [f"`{r['ns']}` {r['name']}" for r in restores if r.get("unique")]
    ttl = [
        f"`{r['ns']}` {r['name']} (expireAfterSeconds {r['expireAfterSeconds']})"
        for r in restores
        if "expireAfterSeconds" in r
    ]
    lines = [
        "#### What a cutover does here",
        "",
        f"1. **Writes:** {how}.",
        f"2. **Drain:** the remaining change events are applied, for up to {drain_timeout:g} s; past that the cutover"
        " fails and the source's writes are unblocked.",
        f"3. **Final verification:** {final_verification} (tick *Verify both clusters whole* for a full one:"
        " longer downtime).",
        "4. **Indexes changed on the destination:** "
        + (
            "; ".join(
                ([f"made unique: {', '.join(uniq)}"] if uniq else [])
                + ([f"TTL restored (documents may start expiring): {', '.join(ttl)}"] if ttl else [])
            )
            or "none"
        )
        + ".",
    ]
    if blocks:
        lines.append(
            "5. **Afterwards the source stays write-blocked**, so nothing writes to the old cluster by mistake."
            " To undo it, run `db.adminCommand({setUserWriteBlockMode: 1, global: false})` on the source."
        )
    else:
        lines.append("5. **Afterwards** the source is left as it is: keep your application away from it.")
    if destination_writes == "blocked":
        lines.append(
            "6. **Destination:** user writes there stay blocked until the destination is ready (after the final"
            " checks and index changes), then they are allowed."
        )
    return "\n".join(lines)
