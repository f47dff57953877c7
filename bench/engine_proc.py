"""The migrator as its own process, for the memory and sync benchmarks: the engine driven as a flow would.

usage: python -m bench.engine_proc CONFIG.yaml MODE
  MODE clone - begin and clone, print one JSON line (documents, seconds, CPU seconds, peak RSS), exit
  MODE sync  - begin, clone, start the sync, print SYNCING; when stdin closes, stop the sync,
               print one JSON line (events applied, peak RSS, error) and exit

The clone's CPU seconds (user + system, every thread of this process) are the migrator's own cost of the
copy; the sync's are read from outside (``cpu_seconds(pid)``) over the window the benchmark writes in, which
it also marks with SIGUSR1 (start) and SIGUSR2 (end) so the process can say which of its threads spent them
(reading the stream, applying, the background verification, the rest).

Why: peak RSS must be the migrator's alone (not the benchmark's, which holds
batches in memory), and the sync's lag must be measured from outside the
process that applies the events, with no GIL shared with the writer.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

from tasks.config import load_config
from tasks.migration import Migration


def vm_kb(field: str) -> int:
    """A VmXXX figure of this process from /proc (KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


THREAD_PARTS = (("reader", ("sync-",)), ("applier", ("apply",)), ("verification", ("continuous-verify", "cverify")))


def threads_cpu() -> dict[tuple[str, int], float]:
    """CPU seconds of every live thread of this process, by (name, ident)."""
    out: dict[tuple[str, int], float] = {}
    for t in threading.enumerate():
        if t.ident is None:
            continue
        try:
            out[(t.name, t.ident)] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, ValueError):
            continue  # ended meanwhile
    return out


def cpu_by_part(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float]) -> dict[str, float]:
    """The CPU seconds spent between two ``threads_cpu`` snapshots, summed by what the threads do."""
    parts = dict.fromkeys([name for name, _ in THREAD_PARTS] + ["other"], 0.0)
    for key, cpu in after.items():
        part = next((n for n, prefixes in THREAD_PARTS if key[0].startswith(prefixes)), "other")
        parts[part] += cpu - before.get(key, 0.0)
    return {k: round(v, 3) for k, v in parts.items()}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(argv[1])
    mode = argv[2]
    rss_start_kb = vm_kb("VmRSS")
    out: dict[str, object] = {"mode": mode}
    with Migration(cfg) as m:
        m.begin()
        t0, cpu0 = time.perf_counter(), own_cpu_seconds()
        stats = m.clone()
        out.update(
            docs=stats.docs,
            bytes=stats.bytes,
            clone_seconds=round(time.perf_counter() - t0, 3),
            clone_cpu_seconds=round(own_cpu_seconds() - cpu0, 3),
        )
        if mode == "sync":
            marks: dict[str, dict[tuple[str, int], float]] = {}
            signal.signal(signal.SIGUSR1, lambda *_: marks.update(start=threads_cpu()))
            signal.signal(signal.SIGUSR2, lambda *_: marks.update(end=threads_cpu()))
            runner = m.start_sync()
            print("SYNCING", flush=True)
            sys.stdin.read()  # the benchmark closes our stdin when it is done measuring
            runner.stop()
            st = runner.state.stats
            out.update(
                applied_events=runner.state.applied_events,
                error=str(runner.state.error or ""),
                update_mode=runner.update_mode,
                apply_stats={"updates": st.updates, "deltas": st.deltas, "lookups": st.lookups},
            )
            if "start" in marks and "end" in marks:
                out.update(sync_cpu_by_part=cpu_by_part(marks["start"], marks["end"]))
    # VmHWM, not getrusage's ru_maxrss: after fork+exec Linux keeps the parent's peak in ru_maxrss.
    out.update(rss_start_kb=rss_start_kb, vm_hwm_kb=vm_kb("VmHWM"))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
