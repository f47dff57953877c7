"""Browser check of the on-call path: the Prefect UI, the `migrate` deployment, the cutover form.

What it does, as an engineer would: starts `make ui` (scripts/ui.sh: a Prefect server,
the deployments, a process worker) and two SecantusDB test servers; runs the `migrate`
deployment; waits for the pause; in headless Chromium (Debian's `chromium`, driven by
Playwright through the system browser: nothing downloads a browser) opens the paused
run, reads the form and the live status, approves the cutover while an application
still writes (it must be refused with the reason, and the run must pause again), stops
the application, approves again, and checks the run completes with its report artifact.

Screenshots (PNG) and the page texts go to ``--out`` (default ``browser-check/``), kept as
CI output.  Exit 0 when every step held; 1 with one line naming the failed step.

    .venv/bin/python scripts/browser_check.py [--out DIR] [--chromium PATH] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pymongo import MongoClient  # noqa: E402

from flows.localservers import ServerPair, free_port  # noqa: E402

NAME = "browser-check"


class CheckFailedError(Exception):
    """A step of the check did not hold (the message names it)."""


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what: str, cond: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailedError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Api:
    """The few Prefect REST calls the check needs (plain HTTP: what the UI itself calls)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - the loopback Prefect API, http only
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        for attempt in range(10):
            try:
                with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback API
                    raw = r.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:  # a busy SQLite-backed server answers 503: retry
                if exc.code != 503 or attempt == 9:
                    raise CheckFailedError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from None
                time.sleep(0.5)
        return None

    def healthy(self) -> bool:
        try:
            return self.call("GET", "/health") is True
        except Exception:  # noqa: BLE001
            return False

    def deployment_id(self, name: str) -> str | None:
        try:
            return str(self.call("GET", f"/deployments/name/{name}")["id"])
        except Exception:  # noqa: BLE001
            return None

    def worker_online(self, pool: str) -> bool:
        try:
            workers = self.call("POST", f"/work_pools/{pool}/workers/filter", {})
        except Exception:  # noqa: BLE001
            return False
        return any(w.get("status") == "ONLINE" for w in workers)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/flow_runs/{run_id}"))

    def state(self, run_id: str) -> tuple[str, str]:
        st = self.flow_run(run_id).get("state") or {}
        return str(st.get("type")), str(st.get("name"))

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        return list(self.call("POST", "/artifacts/filter", body))

    def logs(self, run_id: str) -> list[dict[str, Any]]:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        return list(self.call("POST", "/logs/filter", body))


class Writer(threading.Thread):
    """The application: an insert every 50 ms until stopped."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri, self.stop_event, self.ops = uri, threading.Event(), 0

    def run(self) -> None:
        c: MongoClient[Any]
        with MongoClient(self.uri) as c:
            coll: Any = c["shop"]["app_writes"]
            while not self.stop_event.wait(0.05):
                coll.insert_one({"n": self.ops})
                self.ops += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "browser-check")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--keep", action="store_true", help="leave the UI running at the end (debugging)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="livemigrate-browser-"))
    port = free_port()
    api = Api(f"http://127.0.0.1:{port}/api")
    env = dict(
        os.environ,
        LIVEMIGRATE_UI_PORT=str(port),
        LIVEMIGRATE_UI_LOGS=str(work / "ui-logs"),
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    ui_log = (out / "ui.log").open("w")
    ui = subprocess.Popen(  # noqa: S603
        [shutil.which("bash") or "/bin/bash", str(REPO / "scripts" / "ui.sh")],
        cwd=REPO,
        env=env,
        stdout=ui_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pair = ServerPair(work / "servers")
    writer: Writer | None = None
    try:
        step("starting the test servers and `make ui` (scripts/ui.sh)")
        pair.start()
        from flows.demo import load_sample

        src: MongoClient[Any]
        with MongoClient(pair.source.uri()) as src:
            load_sample(src, 3000)
        cfg = out / "browser-check.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "name": NAME,
                    "source": {"uri": pair.source.uri()},
                    "destination": {"uri": pair.destination.uri()},
                    "cutover": {
                        "max_lag_seconds": 5,
                        "ready_after_seconds": 1,
                        "quiesce_seconds": 1,
                        "quiesce_timeout_seconds": 4,
                    },
                    "tuning": {"workers": 2},
                }
            )
        )
        wait_for("the Prefect server", api.healthy, 60)
        dep = wait_for("the migrate deployment", lambda: api.deployment_id("migrate/migrate"), 60)
        wait_for("a worker online on livemigrate-pool", lambda: api.worker_online("livemigrate-pool"), 60)
        step(f"UI up in {time.monotonic() - t0:.0f} s; application writing; running the migrate deployment")
        writer = Writer(pair.source.uri())
        writer.start()
        run = api.call(
            "POST",
            f"/deployments/{dep}/create_flow_run",
            {"parameters": {"config": str(cfg), "report_dir": str(out / "report")}},
        )
        run_id = str(run["id"])
        (out / "flow_run_id.txt").write_text(run_id)

        def paused() -> bool:
            typ, name = api.state(run_id)
            if typ in ("FAILED", "CRASHED", "CANCELLED", "COMPLETED"):
                raise CheckFailedError(f"the run ended {name} before the pause")
            return typ == "PAUSED"

        wait_for("the run to pause for the cutover decision", paused, 90)
        step(f"paused at {time.monotonic() - t0:.0f} s")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            base = f"http://127.0.0.1:{port}"
            try:
                on_call(page, api, base, run_id, out, writer)
            finally:
                try:
                    page.screenshot(path=str(out / "last-page.png"), full_page=True)
                    logs = api.logs(run_id)
                    (out / "run-log.txt").write_text(
                        "".join(f"{x['timestamp']} {x['level']:>2} {x['name']}: {x['message']}\n" for x in logs)
                    )
                except Exception as exc:  # noqa: BLE001 - evidence is best effort; the verdict stands
                    step(f"could not save the last page or the run log: {exc}")
            browser.close()
        step(f"done in {time.monotonic() - t0:.0f} s")
        return 0
    except CheckFailedError as exc:
        print(f"browser check failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if writer is not None:
            writer.stop_event.set()
        if not args.keep:
            try:
                os.killpg(ui.pid, signal.SIGINT)
                ui.wait(30)
            except Exception:  # noqa: BLE001
                ui.kill()
            pair.stop()
            shutil.rmtree(work, ignore_errors=True)


def artifact_text(api: Api, run_id: str, key: str) -> str:
    found = sorted((a for a in api.artifacts(run_id) if a.get("key") == key), key=lambda a: str(a["created"]))
    return str(found[-1].get("data") or "") if found else ""


def artifact_url(api: Api, base: str, run_id: str, key: str) -> str:
    found = sorted((a for a in api.artifacts(run_id) if a.get("key") == key), key=lambda a: str(a["created"]))
    if not found:
        raise CheckFailedError(f"no artifact {key!r} on the run")
    return f"{base}/artifacts/artifact/{found[-1]['id']}"


def wait_state(api: Api, run_id: str, want: str, timeout: float) -> None:
    def check() -> bool:
        typ, name = api.state(run_id)
        if typ in ("FAILED", "CRASHED", "CANCELLED") or (typ == "COMPLETED" and want != "COMPLETED"):
            raise CheckFailedError(f"the run ended {name} while waiting for {want}")
        return typ == want

    wait_for(f"the run to be {want}", check, timeout)


from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402


def submit_form(page: Any, *, action: str, confirm: bool, approver: str, reason: str, shot: Path) -> str:
    """Open the Resume form, check what it says, fill it with real clicks and submit it; returns its text."""
    page.get_by_role("button", name="Resume").first.click()
    modal = page.locator(".p-modal")
    modal.get_by_text("What a cutover does here").wait_for(timeout=15000)
    text = str(modal.inner_text())
    labels = [line.strip() for line in text.splitlines()]
    for required in (
        "Action",
        "Approver",
        "I confirm that I am ready to cut over the application to the destination cluster",
    ):
        if required not in labels or f"{required} (Optional)" in labels:
            raise CheckFailedError(f"the form does not mark {required!r} as required")
    if "As of " not in text:
        raise CheckFailedError("the form's status has no 'as of' time")
    control = modal.locator(".p-select-button__control").first
    control.click()
    options = page.locator("[role=option], .p-select-option")
    for key in ("Enter", "Space", "ArrowDown"):
        if options.count():
            break
        control.press(key)
        page.wait_for_timeout(300)
    options.filter(has_text=action).first.click()
    if confirm:
        modal.get_by_role("switch").first.click()
    areas = modal.locator("textarea")
    areas.nth(0).fill(approver)
    areas.nth(1).fill(reason)
    page.screenshot(path=str(shot), full_page=True)
    for attempt in range(1, 4):
        modal.get_by_role("button", name="Submit").click()
        try:
            modal.wait_for(state="detached", timeout=10000)
            return text
        except PlaywrightTimeout:
            # A busy SQLite-backed server can answer 503 ("Oops. Something went wrong."): submit again.
            step(f"the form did not close after submit (attempt {attempt}); submitting again")
    raise CheckFailedError("the Resume form would not submit")


def on_call(page: Any, api: Api, base: str, run_id: str, out: Path, writer: Writer) -> None:
    run_url = f"{base}/runs/flow-run/{run_id}"
    key = f"{NAME}-status"
    # 1. The live status artifact: its "as of" time moves while the run is paused.
    page.goto(artifact_url(api, base, run_id, key))
    page.get_by_text("Ready to cut over").first.wait_for(timeout=20000)
    first = str(page.inner_text("body"))
    page.screenshot(path=str(out / "01-live-status.png"), full_page=True)
    as_of = [line for line in first.splitlines() if line.startswith("As of ")]

    def moved() -> bool:
        page.reload()
        page.get_by_text("Ready to cut over").first.wait_for(timeout=20000)
        body = str(page.inner_text("body"))
        now = [line for line in body.splitlines() if line.startswith("As of ")]
        if not now or now == as_of:
            return False
        for needed in ("Copy per namespace", "Latest write on the source", "Ready to cut over: yes", "closes 20"):
            if needed not in body:
                raise CheckFailedError(f"the paused run's live status artifact lacks {needed!r}")
        return True

    wait_for("the live status artifact to be rewritten", moved, 20, every=2)
    step(f"live status artifact rewritten while paused ({as_of[0] if as_of else '?'} -> newer)")
    # 2. Approve while the application still writes: refused with the reason, paused again.
    page.goto(run_url)
    submit_form(
        page,
        action="cutover",
        confirm=True,
        approver="browser-oncall",
        reason="browser check, application still writing",
        shot=out / "02-paused-form-filled.png",
    )
    wait_for("the run to leave the pause", lambda: api.state(run_id)[0] != "PAUSED", 20)
    wait_state(api, run_id, "PAUSED", 60)

    def refusal_logged() -> bool:
        return any(
            x.get("level", 0) >= 30 and "cutover refused" in x["message"] and "writes keep arriving" in x["message"]
            for x in api.logs(run_id)
        )

    wait_for("a WARNING 'cutover refused: writes keep arriving ...' in the run log", refusal_logged, 15)
    decision = artifact_text(api, run_id, f"{NAME}-decision")
    if "refused" not in decision:
        raise CheckFailedError(f"the decision artifact does not record the refusal: {decision[:200]!r}")
    page.goto(run_url)
    page.get_by_text("cutover refused").first.wait_for(timeout=20000)
    page.screenshot(path=str(out / "03-refused-cutover-log.png"), full_page=True)
    step("cutover refused while the application wrote, with the reason in the run log; paused again")
    # 3. Stop the application, approve again: the run completes with its report.
    writer.stop_event.set()
    writer.join(5)
    time.sleep(1.5)
    text = submit_form(
        page,
        action="cutover",
        confirm=True,
        approver="browser-oncall",
        reason="application stopped",
        shot=out / "04-second-form-filled.png",
    )
    (out / "second-form.txt").write_text(text)
    wait_state(api, run_id, "COMPLETED", 90)
    report = artifact_text(api, run_id, f"{NAME}-report")
    outcome = artifact_text(api, run_id, f"{NAME}-outcome")
    decision = artifact_text(api, run_id, f"{NAME}-decision")
    if not report:
        raise CheckFailedError("the completed run has no report artifact")
    if "Cutover approved by **browser-oncall**" not in decision:
        raise CheckFailedError(f"the decision artifact does not record the approval: {decision[:200]!r}")
    if "complete" not in outcome or "closed (complete)" not in outcome:
        raise CheckFailedError(f"the outcome artifact does not say complete / window closed: {outcome[:300]!r}")
    page.goto(artifact_url(api, base, run_id, f"{NAME}-report"))
    page.get_by_text("Migration report").first.wait_for(timeout=20000)
    page.screenshot(path=str(out / "05-report-artifact.png"), full_page=True)
    page.goto(run_url)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "06-completed-run.png"), full_page=True)
    step("run completed; report, outcome and decision artifacts present")


if __name__ == "__main__":
    sys.exit(main())
