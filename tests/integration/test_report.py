"""The final migration report: copy-rate and lag-over-time charts from samples kept in the metadata store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from flows.report import write_migration_report
from tasks.migration import Migration
from tasks.timeline import CLONE, SYNC
from tests.conftest import Deployment
from tests.helpers import Writer, make_config, seed_writer_data, wait_until

pytestmark = pytest.mark.integration


def test_report_has_copy_rate_and_lag_charts_after_a_cutover(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    seed_writer_data(src_client, dbname)
    src_client[dbname]["bulk"].insert_many([{"_id": i, "p": "q" * 300} for i in range(8000)])
    cfg = make_config(
        pair[0].uri, pair[1].uri, dbname, tuning={"partition_docs": 1000, "partitioning": "ranges", "workers": 1}
    )
    writer = Writer(src_client, dbname, rate_sleep=0.002)
    with Migration(cfg, src_client, dst_client) as m:
        m.timeline.clone_every = 0.05
        m.timeline.sync_every = 0.2
        m.begin()
        m.clone()
        writer.start()
        m.start_sync()
        assert wait_until(lambda: len(m.timeline.series(SYNC)) >= 5, 30)
        writer.stop()

        def verify(doc: Any) -> dict[str, Any]:
            return {"equal": True}

        res = m.cutover("oncall", "report test", verify)
        assert res.phase.value == "complete"
        clone_samples = m.timeline.series(CLONE)
        path, r = write_migration_report(m.store, m.name, tmp_path / "report")

    # The clone samples are cumulative, start at zero and end at everything copied.
    assert clone_samples[0]["docs"] == 0
    assert clone_samples[-1]["docs"] == 8000 + 300 + 50
    docs = [s["docs"] for s in clone_samples]
    assert docs == sorted(docs)
    assert r["charts"]["copy_rate"]["samples"] >= 1 and r["charts"]["copy_rate"]["peak_docs_per_second"] > 0
    assert r["charts"]["lag"]["samples"] >= 5
    html = path.read_text()
    assert html.count("<svg") == 2 and html.count("<polyline") == 2
    assert "no samples recorded" not in html
    assert "<h1>Migration report" in html and "<li><b>Phase:</b> complete</li>" in html
    assert "# Migration report" not in html and "- **" not in html  # rendered, not raw markdown
    md = (tmp_path / "report" / "migration-report.md").read_text()
    assert re.search(r"`[▁▂▃▄▅▆▇█]+`", md)
    assert "**cutover** by oncall" in md
    assert "Final verification:** equal" in md


def test_live_view_bars_and_report_command(
    pair: tuple[Deployment, Deployment], src_client: MongoClient, dst_client: MongoClient, dbname: str, tmp_path: Path
) -> None:
    import io
    import json
    import subprocess
    import sys

    import yaml
    from rich.console import Console

    from flows.console import LiveView

    src_client[dbname]["a"].insert_many([{"_id": i} for i in range(3000)])
    src_client[dbname]["b"].insert_many([{"_id": i} for i in range(500)])
    name = f"rep-{dbname}"[:60]
    cfg = make_config(
        pair[0].uri, pair[1].uri, dbname, name=name, tuning={"partition_docs": 1000, "partitioning": "ranges"}
    )
    with Migration(cfg, src_client, dst_client) as m:
        m.begin()
        m.clone()
        assert m.wait_ready(30)
        view = LiveView(m.store, name, Console(file=io.StringIO()))
        d = view.refresh()
        assert d is not None and d["phase"] == "syncing"
        bars = {t.description.strip(): t for t in view.progress.tasks}
        total = next(t for k, t in bars.items() if k.startswith("[bold]clone"))
        assert total.completed == 3500 and total.total == 3500
        assert bars[f"{dbname}.a"].completed == 3000 and bars[f"{dbname}.b"].completed == 500
        assert any(k.startswith("[bold]sync[/] lag") for k in bars)
        m.cancel("test", "done")

    path = tmp_path / "m.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "source": {"uri": pair[0].uri},
                "destination": {"uri": pair[1].uri},
                "namespaces": {"include": [f"{dbname}.*"]},
            }
        )
    )
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "report", "--config", str(path), "--out", str(tmp_path / "r"), "--json"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["phase"] == "cancelled" and out["clone"]["docs"] == 3500
    assert Path(out["report"]).exists()
    assert "series" not in out
