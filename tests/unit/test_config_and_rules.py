"""Config model, namespace rules, phase table and partition planning: pure logic."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
from bson import Decimal128, ObjectId

from tasks.config import config_from_dict, load_config
from tasks.errors import ConfigError, PhaseError
from tasks.namespaces import NamespaceFilter
from tasks.partition import ALL, REST, IdRange, ranges_from_samples
from tasks.state import TRANSITIONS, Phase, check_transition

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-very-secret"


def base(**over: object) -> dict:
    d: dict = {
        "name": "m1",
        "source": {"uri": f"mongodb://u:{PASSWORD}@h1:27017"},
        "destination": {"uri": "mongodb://h2:27017"},
    }
    d.update(over)
    return d


def test_secrets_hidden_in_repr_and_dump() -> None:
    cfg = config_from_dict(base())
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg.model_dump())
    assert PASSWORD in cfg.source_uri()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (base(name="bad name!"), "name"),
        (base(source={"uri": "http://x"}), "source.uri"),
        (base(cutover={"window_hours": -1}), "cutover.window_hours"),
        (base(tuning={"workers": 0}), "tuning.workers"),
        (base(namespaces={"include": ["/([/"]}), "namespaces.include"),
        (
            base(sharding={"shardingEntries": [{"database": "d", "collection": "c", "shardCollection": {"key": {}}}]}),
            "sharding.shardingEntries.0.shardCollection.key",
        ),
        (base(unknown=1), "unknown"),
        ({"name": "x", "destination": {"uri": "mongodb://h"}}, "source"),
    ],
)
def test_bad_config_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "f.yaml")
    msg = str(info.value)
    assert msg.startswith(f"f.yaml: {field}") or field in msg
    assert PASSWORD not in msg and "\n" not in msg


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_PASSWORD", "DEST_PASSWORD", "ATLAS_PRIVATE_KEY"):
        monkeypatch.setenv(var, "x")
    cfg = load_config(ROOT / "examples" / "migration.yaml")
    assert cfg.cutover.window_hours == 120 and cfg.cutover.extension_hours == 24


def test_link_resolution() -> None:
    cfg = config_from_dict({"name": "m", "link": "prod"})
    assert cfg.needs_resolution()
    seen = []
    resolved = cfg.resolve(lambda block: seen.append(block) or "mongodb://resolved:1")
    assert seen == ["livemigrate-link-prod-source", "livemigrate-link-prod-dest"]
    assert resolved.source_uri() == "mongodb://resolved:1"


def test_cli_bad_config_exit_2_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(
        f"name: m\nsource: {{uri: 'mongodb://u:{PASSWORD}@h'}}\ndestination: {{uri: 'mongodb://h2'}}\ntuning: {{workers: -3}}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "flows.cli", "describe", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2
    assert "tuning.workers" in r.stderr and "Traceback" not in r.stderr and PASSWORD not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_namespace_filter() -> None:
    f = NamespaceFilter.from_rules(
        config_from_dict(
            base(namespaces={"include": ["shop.*", "/^logs\\.keep/"], "exclude": ["shop.tmp*"]})
        ).namespaces
    )
    assert f.matches("shop", "orders") and f.matches("logs", "keep_1")
    assert not f.matches("shop", "tmp_x") and not f.matches("logs", "drop") and not f.matches("other", "c")
    assert (
        not f.matches("shop", "system.views")
        and not f.matches("admin", "x")
        and not f.matches("__livemigrate", "migrations")
    )
    assert f.db_in_scope("shop") and f.db_in_scope("logs") and not f.db_in_scope("local")
    everything = NamespaceFilter.from_rules(None)
    assert everything.matches("a", "b") and not everything.matches("config", "x")


def test_phase_table() -> None:
    check_transition(Phase.CLONING, Phase.SYNCING)
    with pytest.raises(PhaseError):
        check_transition(Phase.COMPLETE, Phase.SYNCING)
    with pytest.raises(PhaseError):
        check_transition(Phase.CREATED, Phase.COMPLETE)
    assert all(not TRANSITIONS[p] for p in (Phase.COMPLETE, Phase.CANCELLED, Phase.EXPIRED))


def test_ranges_cover_brackets_and_rest() -> None:
    samples = {"number": [1, 2, 3, 4, 5, 6, 7, 8], "string": ["a", "b"], "objectId": [ObjectId()]}
    ranges = ranges_from_samples(samples, total=1000, sample_size=11, target_docs=200)
    brackets = [r.bracket for r in ranges]
    assert brackets[-1] == REST and set(ranges[-1].rest_excludes) == {"number", "string", "objectId"}
    nums = [r for r in ranges if r.bracket == "number"]
    assert len(nums) > 1 and not nums[0].has_lower and not nums[-1].has_upper
    for a, b in itertools.pairwise(nums):
        assert a.upper == b.lower  # contiguous, no gap, no overlap
    first = nums[0].filter()
    assert "$or" in first  # NaN _ids go to the first numeric range
    assert any(isinstance(v, float) and math.isnan(v) for v in first["$or"][1]["_id"]["$in"])
    assert any(isinstance(v, Decimal128) for v in first["$or"][1]["_id"]["$in"])
    assert ranges_from_samples({}, 10, 0, 5) == [IdRange(ALL)]
    assert IdRange(ALL).filter() == {}
    rec = nums[1].to_record()
    assert IdRange.from_record(rec) == nums[1]
