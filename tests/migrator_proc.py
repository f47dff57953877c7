"""A migrator process for crash tests: the engine driven exactly as a flow would, without Prefect.

usage: python -m tests.migrator_proc CONFIG.yaml MODE
  MODE clone  - begin and clone, then exit
  MODE sync   - begin, clone if needed, then sync until killed (prints 'SYNCING')
  MODE drain  - begin, clone if needed, sync until the source's latest write is applied, then exit
"""

from __future__ import annotations

import sys
import time

from tasks.config import load_config
from tasks.migration import Migration
from tasks.mongo import latest_optime


def main() -> int:
    cfg = load_config(sys.argv[1])
    mode = sys.argv[2]
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


if __name__ == "__main__":
    sys.exit(main())
