"""The bi-connector check: ask the Atlas Admin API when we can, look at currentOp when we cannot.

Why: a BI Connector (mongosqld) reading the destination during the migration
sees half-copied data and adds load; Atlas shared tiers and serverless
instances cannot take a migration at all.  Only Atlas knows whether its BI
Connector is enabled, so without an API key the check says what it could
and could not see.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from checks.prechecks.facts import CannotCheck, Facts
from checks.results import CheckResult, Status
from tasks.config import AtlasRef

log = logging.getLogger(__name__)

ATLAS_ACCEPT = "application/vnd.atlas.2024-08-05+json"
_SERVERLESS_CODES = {"CANNOT_USE_SERVERLESS_INSTANCE_IN_CLUSTER_API", "SERVERLESS_INSTANCE_NOT_FOUND"}
_FLEX_CODES = {"CANNOT_USE_FLEX_CLUSTER_IN_CLUSTER_API"}
SHARED_TIERS = frozenset({"M0", "M2", "M5", "FLEX"})  # shared and Flex tiers cannot take a live migration


def atlas_configured(ref: AtlasRef | None) -> bool:
    """Identifiers and a complete API key are present (the key may come from a Secret block via flows/)."""
    return bool(ref and ref.project_id and ref.cluster_name and ref.api_public_key and ref.api_private_key)


def cluster_url(ref: AtlasRef) -> str:
    q = urllib.parse.quote
    return f"{ref.base_url.rstrip('/')}/groups/{q(ref.project_id, safe='')}/clusters/{q(ref.cluster_name, safe='')}"


def _instance_sizes(cluster: dict[str, Any]) -> list[str]:
    """Instance size names from either API shape (v2 replicationSpecs or v1 providerSettings)."""
    sizes: list[str] = []
    for spec in cluster.get("replicationSpecs") or []:
        for region in spec.get("regionConfigs") or []:
            for kind in ("electableSpecs", "readOnlySpecs", "analyticsSpecs"):
                size = (region.get(kind) or {}).get("instanceSize")
                if size and (region.get(kind) or {}).get("nodeCount", 1):
                    sizes.append(str(size))
            if region.get("providerName") in ("TENANT", "FLEX") and not sizes:
                sizes.append(str(region.get("providerName")))
    legacy = (cluster.get("providerSettings") or {}).get("instanceSizeName")
    if legacy:
        sizes.append(str(legacy))
    return sorted(set(sizes))


def fetch_atlas_cluster(ref: AtlasRef, timeout_s: float) -> dict[str, Any]:
    """GET the cluster with HTTP digest auth; returns facts, never the key.

    Errors become facts too (``error``), so the rule can say what went wrong.
    """
    url = cluster_url(ref)
    secret = ref.api_private_key.get_secret_value() if ref.api_private_key else ""
    mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    mgr.add_password(None, ref.base_url, ref.api_public_key or "", secret)
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(mgr))
    req = urllib.request.Request(url, headers={"Accept": ATLAS_ACCEPT})  # noqa: S310 - base_url is https or a test server
    facts: dict[str, Any] = {"url": url, "cluster_name": ref.cluster_name, "project_id": ref.project_id}
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            cluster = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        body: dict[str, Any] = {}
        try:
            body = json.loads(exc.read().decode("utf-8"))
        except (ValueError, OSError):
            pass
        code = str(body.get("errorCode", ""))
        facts["http_status"] = exc.code
        if code in _SERVERLESS_CODES:
            return {**facts, "serverless": True, "error_code": code}
        if code in _FLEX_CODES:
            return {**facts, "instance_sizes": ["FLEX"], "error_code": code}
        facts["error"] = f"Atlas API answered HTTP {exc.code} {code or exc.reason}".strip()
        return facts
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        facts["error"] = f"Atlas API unreachable: {reason}"
        return facts
    bi = cluster.get("biConnector") or {}
    return {
        **facts,
        "bi_connector_enabled": bool(bi.get("enabled")),
        "instance_sizes": _instance_sizes(cluster),
        "cluster_type": cluster.get("clusterType"),
        "state": cluster.get("stateName"),
        "serverless": False,
    }


def rule_bi_connector(f: Facts) -> CheckResult:
    """No BI Connector on the destination; no Atlas shared tier or serverless destination."""
    d = f.dest
    atlas = d.atlas
    ev: dict[str, Any] = {"checked": [], "not_checked": []}
    fails: list[str] = []
    if atlas is None:
        ev["not_checked"].append("Atlas BI Connector setting and tier (no destination.atlas identifiers and API key)")
    elif atlas.get("error"):
        ev["atlas"] = atlas
        fails.append(f"{atlas['error']} for cluster {atlas.get('cluster_name')}")
    else:
        ev["atlas"] = atlas
        ev["checked"].append("Atlas Admin API cluster settings")
        if atlas.get("bi_connector_enabled"):
            fails.append(f"BI Connector for Atlas is enabled on {atlas.get('cluster_name')}")
        if atlas.get("serverless"):
            fails.append(f"{atlas.get('cluster_name')} is a serverless instance")
        shared = sorted(set(atlas.get("instance_sizes") or []) & (SHARED_TIERS | {"TENANT"}))
        if shared:
            fails.append(f"{atlas.get('cluster_name')} is a shared tier ({', '.join(shared)})")
    if f.destination.connected and d.current_op_checked is not None:
        ev["checked"].append(f"currentOp: {d.current_op_checked} connection(s) inspected for mongosqld clients")
        ev["mongosqld_clients"] = d.mongosqld_clients
        if d.mongosqld_clients:
            fails.append(f"mongosqld (BI Connector) connected from {', '.join(d.mongosqld_clients)}")
    else:
        ev["not_checked"].append(f"currentOp ({f.problems.get('currentOp', 'destination not connected')})")
    if not ev["checked"] and not fails:
        raise CannotCheck("; ".join(ev["not_checked"]))
    if fails:
        return CheckResult(
            "bi-connector",
            Status.FAIL,
            "; ".join(fails),
            ev,
            "disable the BI Connector (and stop mongosqld) on the destination; use a dedicated (M10+) Atlas cluster, "
            "or fix destination.atlas identifiers and API key",
        )
    seen = "; ".join(ev["checked"])
    unseen = f"; not checked: {'; '.join(ev['not_checked'])}" if ev["not_checked"] else ""
    return CheckResult("bi-connector", Status.PASS, f"no BI Connector found ({seen}{unseen})", ev)
