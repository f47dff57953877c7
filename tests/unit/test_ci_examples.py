"""The example CI workflows and the notification automations are valid and say what the docs promise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    data["on"] = data.pop(True, data.get("on"))
    return data


def _steps(wf: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def _run_text(wf: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in _steps(wf))


@pytest.mark.parametrize("name", ["prechecks.yml", "start-migration.yml"])
def test_workflow_is_a_valid_manual_workflow(name: str) -> None:
    wf = _load(WORKFLOWS / name)
    assert wf["name"]
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert inputs["config"]["required"] is True
    for job in wf["jobs"].values():
        assert job["runs-on"] and job["steps"]
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
    # Inputs reach scripts through env, never spliced into the shell text (script injection).
    assert "${{ inputs." not in _run_text(wf)


def test_prechecks_workflow_runs_validate_json_and_uploads_the_report() -> None:
    wf = _load(WORKFLOWS / "prechecks.yml")
    text = _run_text(wf)
    assert "make setup" in text
    assert re.search(r'\.venv/bin/livemigrate validate --config "\$CONFIG" --json > prechecks\.json', text)
    upload = [s for s in _steps(wf) if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload and upload[0]["with"]["path"] == "prechecks.json" and upload[0]["if"] == "always()"
    assert "prefect deployment run 'prechecks/prechecks'" in text and "--watch" in text


def test_start_migration_runs_the_migrate_deployment_with_secrets() -> None:
    wf = _load(WORKFLOWS / "start-migration.yml")
    (job,) = wf["jobs"].values()
    assert job["env"]["PREFECT_API_URL"] == "${{ secrets.PREFECT_API_URL }}"
    assert job["env"]["PREFECT_API_KEY"] == "${{ secrets.PREFECT_API_KEY }}"
    text = _run_text(wf)
    # deployments/start_run.py sends the reviewed file inline and follows the run (tests/flows/test_start_run.py).
    assert any(str(s.get("uses", "")).startswith("actions/checkout@") for s in _steps(wf))
    assert 'python deployments/start_run.py --config "$CONFIG" --until "$UNTIL"' in text


def test_ci_names_deployments_that_prefect_yaml_defines() -> None:
    names = {d["name"] for d in yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]}
    text = "".join(_run_text(_load(p)) for p in WORKFLOWS.glob("*.yml"))
    text += (ROOT / "deployments" / "start_run.py").read_text().replace('DEPLOYMENT = "', "prefect deployment run '")
    used = set(re.findall(r"prefect deployment run '([^'/\"]+)/([^'\"]+)", text))
    assert used and all(flow == dep and dep in names for flow, dep in used)


def test_notify_automations_parse_and_name_the_events() -> None:
    from prefect.events.schemas.automations import AutomationCore

    data = yaml.safe_load((ROOT / "deployments" / "automation-notify.yaml").read_text())
    autos = {a["name"]: AutomationCore.model_validate(a) for a in data["automations"]}
    ready = autos["livemigrate-ready-to-cut-over"]
    assert ready.trigger.expect == {"livemigrate.migration.ready"}
    assert ready.trigger.match.model_dump()["prefect.resource.id"] == "livemigrate.migration.*"
    failed = autos["livemigrate-run-failed"]
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert "migrate" in failed.trigger.match_related.model_dump()["prefect.resource.name"]
    for a in autos.values():
        assert a.actions and all(act.type == "send-notification" for act in a.actions)
    doc = (ROOT / "docs" / "automation.md").read_text()
    assert (
        "livemigrate.migration.ready" in doc
        and "prefect automation create --from-file deployments/automation-notify.yaml" in doc
    )
