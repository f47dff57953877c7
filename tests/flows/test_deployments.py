"""deployments/prefect.yaml describes the four deployments, and they really register on a Prefect server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import register

pytestmark = [pytest.mark.flows, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"

EXPECTED = {
    "prechecks": ("flows/prechecks.py:prechecks_flow", {"config"}),
    "migrate": ("flows/migrate.py:migrate_flow", {"config", "restart", "report_dir", "skip_prechecks"}),
    "verify": ("flows/verify.py:verify_flow", {"config", "report_dir", "ignore_field_order"}),
    "clone-worker": ("flows/clone_worker.py:clone_worker_flow", {"config", "workers"}),
}


def _deployments() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in data["deployments"]}


def test_prefect_yaml_declares_the_four_deployments_on_the_pool() -> None:
    deps = _deployments()
    assert set(deps) == set(EXPECTED)
    for name, (entrypoint, params) in EXPECTED.items():
        d = deps[name]
        assert d["entrypoint"] == entrypoint
        assert d["work_pool"]["name"] == register.POOL
        assert set(d["parameters"]) <= params  # defaults only for documented parameters
        for p in params:
            assert p in d["description"], f"{name}: parameter {p} is not documented"
    assert deps["migrate"]["parameters"] == {"restart": False, "report_dir": None, "skip_prechecks": False}
    assert deps["verify"]["parameters"] == {"report_dir": None, "ignore_field_order": False}
    assert deps["clone-worker"]["parameters"] == {"workers": None}


def test_ensure_work_pool_is_idempotent_and_makes_a_process_pool() -> None:
    from prefect.client.orchestration import get_client

    pool = "livemigrate-test-pool"
    assert register.ensure_work_pool(pool) is True
    assert register.ensure_work_pool(pool) is False
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "process"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deployment_registers_through_the_python_api(name: str) -> None:
    """Register each deployment as prefect.yaml says, from this checkout, without build or push steps."""
    from prefect import Flow
    from prefect.client.orchestration import get_client

    spec = _deployments()[name]
    path = spec["entrypoint"].split(":")[0]
    if not (ROOT / path).exists():
        pytest.skip(f"{path} is not written yet")
    register.ensure_work_pool()
    flow = Flow.from_source(source=str(ROOT), entrypoint=spec["entrypoint"])
    flow.deploy(
        name=name,
        work_pool_name=register.POOL,
        parameters=spec["parameters"],
        description=spec["description"],
        build=False,
        push=False,
        print_next_steps=False,
    )
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{flow.name}/{name}")
    assert flow.name == name  # `prefect deployment run '<name>/<name>'` in the docs and CI
    assert dep.work_pool_name == register.POOL
    assert dep.entrypoint == spec["entrypoint"]
    assert set(EXPECTED[name][1]) <= set(dep.parameter_openapi_schema["properties"])
    assert dep.parameters == spec["parameters"]


def test_register_runs_prefect_deploy_all_from_the_repo_root() -> None:
    """deployments/register.py end to end: pool plus `prefect deploy --all` of the real prefect.yaml."""
    from prefect.client.orchestration import get_client

    missing = [e for e, _ in EXPECTED.values() if not (ROOT / e.split(":")[0]).exists()]
    if missing:
        pytest.skip(f"flows not written yet: {missing}")
    t0 = time.monotonic()
    assert register.main([]) == 0
    assert time.monotonic() - t0 < 60
    with get_client(sync_client=True) as client:
        for name, (entrypoint, params) in EXPECTED.items():
            dep = client.read_deployment_by_name(f"{name}/{name}")
            assert dep.work_pool_name == register.POOL
            assert dep.entrypoint == entrypoint
            assert params <= set(dep.parameter_openapi_schema["properties"])
            assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]


def test_deploy_command_selects_names_or_all() -> None:
    assert "--all" in register.deploy_command()
    cmd = register.deploy_command(["migrate", "verify"], pool="other")
    assert "--all" not in cmd and cmd.count("--name") == 2 and cmd[cmd.index("--pool") + 1] == "other"


def _notify_block_id() -> Any:
    from prefect.blocks.notifications import SlackWebhook

    block = SlackWebhook(url="https://hooks.slack.com/services/T000/B000/XXXX")
    return block.save("livemigrate-notify", overwrite=True)


def test_notify_automations_file_is_accepted_by_the_server() -> None:
    """deployments/automation-notify.yaml, with a real block id, creates both automations (templates included)."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    block_id = str(_notify_block_id())
    text = (
        (ROOT / "deployments" / "automation-notify.yaml")
        .read_text()
        .replace("00000000-0000-0000-0000-000000000000", block_id)
    )
    specs = yaml.safe_load(text)["automations"]
    with get_client(sync_client=True) as client:
        for spec in specs:
            client.create_automation(AutomationCore.model_validate(spec))
        for spec in specs:
            (found,) = [
                a
                for a in client.read_automations_by_name(spec["name"])
                if str(a.actions[0].block_document_id) == block_id
            ]
            assert found.trigger.expect == set(spec["trigger"]["expect"])


def test_docs_python_automations_run() -> None:
    """The Python block in docs/automation.md really creates the two automations."""
    from prefect.client.orchestration import get_client

    block_id = _notify_block_id()
    doc = (ROOT / "docs" / "automation.md").read_text()
    snippet = doc.split("## 2b.", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/automation.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["ready"].id and namespace["failed"].id
    with get_client(sync_client=True) as client:
        ready = client.read_automation(namespace["ready"].id)
        failed = client.read_automation(namespace["failed"].id)
    assert ready.trigger.expect == {"livemigrate.migration.ready"}
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert ready.actions[0].block_document_id == block_id
