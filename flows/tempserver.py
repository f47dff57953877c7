"""A temporary Prefect server for `livemigrate migrate`, started at once in a process of its own.

Why (issue 20): with no Prefect API configured, a flow call starts Prefect's temporary server itself
(``prefect.server.api.server.SubprocessASGIServer``): it imports the server's code into this process
(about 2 s of CPU), then starts it (about 3 s), all before the flow's first line, and on a small
machine while the engine's first steps (flows/headstart.py) need the CPU too.  `livemigrate migrate`
instead starts the same server at once - the same app (``create_app`` under uvicorn), the same
environment Prefect gives it (no UI, ephemeral services) - in a process of its own at a lower CPU
priority, and points this process's Prefect at it (``PREFECT_API_URL``) before Prefect is imported.

Nothing is started when an API is configured (``PREFECT_API_URL`` in the environment, the profile or
the settings files: Prefect itself answers, in the server process) or the ephemeral mode is turned off;
when the server does not come up in time, Prefect's own start is the fallback.  The server stops when
this process exits, and on its own when this process is gone (even killed).

``python -m flows.tempserver PARENT_PID`` is the server process: its first line on stdout says what it
does (``serving URL``, or ``configured``/``disabled``), then it serves until it is stopped.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO

log = logging.getLogger(__name__)

NICE = 10  # below the engine and the test servers: the server only has to be up when the flow starts
READY_TIMEOUT_S = 60.0
# What SubprocessASGIServer sets for its uvicorn process (prefect/server/api/server.py, Prefect 3.9).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


class TempServer:
    """The server process, seen from `livemigrate migrate`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.api_url: str | None = None
        self._first_line: list[str] = []
        self._said = threading.Event()
        threading.Thread(target=self._read_first_line, name="prefect-server-line", daemon=True).start()
        atexit.register(self.stop)  # before Prefect registers its own exit flushes, so it runs after them

    @classmethod
    def start(cls) -> TempServer | None:
        """Start the server process unless Prefect is configured in the environment or already imported."""
        if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
            return None  # an API is configured, or Prefect already runs here (a Secret block was read)
        verbose = logging.getLogger().isEnabledFor(logging.INFO)  # --verbose: the server's own lines too
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "flows.tempserver", str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None if verbose else subprocess.DEVNULL,
                env={**os.environ, **SERVER_ENV},
                text=True,
                start_new_session=True,  # a Ctrl-C at the terminal must not stop it before the run records its end
            )
        except OSError as exc:
            log.info("temporary Prefect server not started early (%s); Prefect starts it", exc)
            return None
        return cls(proc)

    def _read_first_line(self) -> None:
        stdout: IO[str] | None = self.proc.stdout
        try:
            self._first_line.append(stdout.readline().strip() if stdout is not None else "")
        finally:
            self._said.set()

    def use(self) -> bool:
        """Point this process's Prefect at the server once it answers; False: Prefect decides as usual.

        Call before Prefect is imported.
        """
        deadline = time.monotonic() + READY_TIMEOUT_S
        if not self._said.wait(READY_TIMEOUT_S):
            self.stop()
            return False
        kind, _, url = (self._first_line or [""])[0].partition(" ")
        if kind != "serving" or not url:
            self.stop()  # configured elsewhere (a profile) or ephemeral mode off: nothing to serve
            return False
        while time.monotonic() < deadline and self.proc.poll() is None:
            if _healthy(url):
                self.api_url = url
                os.environ["PREFECT_API_URL"] = url
                log.info("temporary Prefect server on %s", url.removesuffix("/api"))
                return True
            time.sleep(0.1)
        log.info("temporary Prefect server did not come up; Prefect starts its own")
        self.stop()
        return False

    def stop(self) -> None:
        """Terminate the server (as SubprocessASGIServer.stop does); idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_with_parent(parent: int) -> None:
    """Stop the server (as SIGTERM does) once the process that started it is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), 15)


def serve(parent: int) -> int:
    """The server process: say what it does on stdout, then serve Prefect's API until stopped."""
    os.nice(NICE)
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value():
        print("configured", flush=True)
        return 0
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        print("disabled", flush=True)
        return 0
    import uvicorn

    port = _free_port()
    threading.Thread(target=_stop_with_parent, args=(parent,), name="stop-with-parent", daemon=True).start()
    print(f"serving http://127.0.0.1:{port}/api", flush=True)
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
