"""A migrator that runs one migration through an approved cutover, engine only (no Prefect).

usage: python -m tests.cutover_proc CONFIG.yaml APPROVER

Run twice with the same arguments after a kill -9, it does what `livemigrate migrate`
does: an interrupted cutover is resumed without asking for approval again.
Prints the phase it reaches ('CUTTING_OVER' before the drain, then the end phase).
"""

from __future__ import annotations

import sys
from typing import Any

from checks.verify import run_verification
from tasks.config import load_config
from tasks.migration import Migration
from tasks.state import MigrationDoc


def main() -> int:
    cfg = load_config(sys.argv[1])
    approver = sys.argv[2]

    def verify(doc: MigrationDoc) -> dict[str, Any]:
        result = run_verification(cfg, report_dir=None, pending_index_restores=doc.index_restores)
        return {"equal": bool(result.equal)}

    with Migration(cfg) as m:
        m.begin()
        m.clone()
        if m.interrupted_cutover() is not None:
            print("RESUMING", flush=True)
            res = m.resume_cutover(verify)
        else:
            assert m.wait_ready(120), "sync never became ready"
            print("CUTTING_OVER", flush=True)
            res = m.cutover(approver, "crash test", verify)
        print(res.phase.value.upper(), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
