"""A migrator process for crash tests: the engine driven exactly as a flow would, without Prefect.

usage: python -m tests.migrator_proc CONFIG.yaml MODE
  MODE clone  - begin and clone, then exit
  MODE sync   - begin, clone if needed, then sync until killed or stopped (prints 'SYNCING')
  MODE drain  - begin, clone if needed, sync until the source's latest write is applied, then exit

SIGTERM and SIGINT stop it the way they stop `livemigrate migrate` (tasks/shutdown.py): the sync
thread finishes its batch and checkpoints, the process prints
'STOPPED applied=N checkpoint=N stopped_cleanly=B' on stdout and one line on stderr, and exits
with 128 + the signal number.  An engine error prints one line and exits with its exit code.
"""

from __future__ import annotations

import sys
import time

from tasks.config import load_config
from tasks.errors import LiveMigrateError
from tasks.migration import Migration
from tasks.mongo import latest_optime
from tasks.shutdown import ShutdownRequested, graceful_shutdown
from tasks.sync import SyncRunner


def main() -> int:
    cfg = load_config(sys.argv[1])
    mode = sys.argv[2]
    runner: SyncRunner | None = None
    with graceful_shutdown():
        try:
            with Migration(cfg) as m:
                m.begin()
                print("BEGUN", flush=True)
                m.clone()
                print("CLONED", flush=True)
                if mode == "clone":
                    return 0
                runner = m.start_sync()
                print("SYNCING", flush=True)
                if mode == "sync":
                    while True:
                        time.sleep(1)
                        if runner.state.error:
                            raise runner.state.error
                target = latest_optime(m.src)
                ok = runner.wait(lambda st: runner.applied_through(target), 120)
                print("DRAINED" if ok else "NOT DRAINED", flush=True)
                return 0 if ok else 1
        except ShutdownRequested as exc:
            # Migration.close() has run: the sync thread stopped and wrote its last checkpoint.
            if runner is not None:
                st = runner.state
                print(
                    f"STOPPED applied={st.applied_events} checkpoint={st.checkpoint_events} "
                    f"stopped_cleanly={not st.running}",
                    flush=True,
                )
            print(f"migrator: {exc.one_line(cfg.name, 'run it again to resume')}", file=sys.stderr, flush=True)
            return exc.exit_code
        except LiveMigrateError as exc:
            print(f"migrator: error: {exc.one_line()}", file=sys.stderr, flush=True)
            return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
