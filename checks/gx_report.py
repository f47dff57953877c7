"""The verification verdict as a Great Expectations suite, with Data Docs and a JSON summary.

Why: auditors and change boards read Data Docs; the suite states the
acceptance criteria in one place (counts equal, hashes equal, no missing,
extra or changed documents, same indexes and options) and is validated
against the per-namespace DataFrame of :class:`~checks.verify_result.VerifyResult`.
GX takes seconds to import, so it is imported only when a report is asked for.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from checks.verify_result import VerifyResult
from tasks.errors import TerminalError

log = logging.getLogger(__name__)

SUITE_NAME = "livemigrate_verify"
SITE_NAME = "livemigrate_verify"
SUMMARY_FILE = "summary.json"
ZERO_COLUMNS = ("missing", "extra", "changed", "index_diffs", "option_diffs")


def _context(docs_dir: Path) -> Any:
    """An in-memory GX context whose only Data Docs site is ``docs_dir`` (no progress bars, no analytics)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    cfg = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=cfg)
    context.add_data_docs_site(
        SITE_NAME,
        {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def build_suite(ignore_field_order: bool) -> Any:
    """The acceptance criteria for "destination equals source", one expectation each."""
    import great_expectations as gx
    from great_expectations.expectations.core.expect_column_pair_values_to_be_equal import (
        ExpectColumnPairValuesToBeEqual,
    )
    from great_expectations.expectations.core.expect_column_values_to_be_in_set import ExpectColumnValuesToBeInSet

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    suite.add_expectation(ExpectColumnPairValuesToBeEqual(column_A="source_count", column_B="dest_count"))
    hashes: dict[str, Any] = {"column_A": "source_hash", "column_B": "dest_hash"}
    if ignore_field_order:
        # Field-order-only differences change the raw-byte hash by design; they are reported separately.
        hashes.update(row_condition="field_order_only == 0", condition_parser="pandas")
    suite.add_expectation(ExpectColumnPairValuesToBeEqual(**hashes))
    for column in ZERO_COLUMNS:
        suite.add_expectation(ExpectColumnValuesToBeInSet(column=column, value_set=[0]))
    return suite


def write_report(result: VerifyResult, report_dir: Path) -> tuple[Path, bool]:
    """Validate the result with the GX suite, build Data Docs into ``report_dir``, write summary.json.

    Returns (path of the Data Docs index.html, GX success).  The JSON summary
    carries the same verdict plus ``report`` (paths and GX success).  Raises
    TerminalError when the directory cannot be written.
    """
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction

    report_dir = Path(report_dir)
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TerminalError(f"--report {report_dir}: cannot create the directory ({exc.strerror})") from None
    docs_dir = report_dir / "data_docs"
    context = _context(docs_dir)
    batch_def = (
        context.data_sources.add_pandas("verification")
        .add_dataframe_asset("namespaces")
        .add_batch_definition_whole_dataframe("all_namespaces")
    )
    suite = context.suites.add(build_suite(bool(result.settings.get("ignore_field_order"))))
    vdef = context.validation_definitions.add(gx.ValidationDefinition(name="verify", data=batch_def, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="livemigrate_verify",
            validation_definitions=[vdef],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])],
            result_format="COMPLETE",
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": result.to_dataframe()})
    context.build_data_docs(site_names=[SITE_NAME])
    index = docs_dir / "index.html"
    failed = [
        r.expectation_config.type
        for vr in run.run_results.values()
        for r in vr.results
        if not r.success and r.expectation_config is not None
    ]
    result.report = {
        "directory": str(report_dir),
        "data_docs": str(index),
        "summary": str(report_dir / SUMMARY_FILE),
        "gx_success": bool(run.success),
        "gx_failed_expectations": sorted(set(failed)),
    }
    (report_dir / SUMMARY_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("verification report written to %s (GX success: %s)", report_dir, run.success)
    return index, bool(run.success)
