"""A local stand-in for the Atlas Admin API: clusters by name, HTTP digest auth, Atlas-shaped errors.

Why: the bi-connector check must be shown to read ``biConnector.enabled`` and
the tier from real HTTP with digest authentication, without Atlas.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REALM = "MMS Public API"
PROJECT_ID = "5e2211c17a3e5a48f5497de3"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - HTTP digest auth is defined with MD5


def dedicated_cluster(name: str, *, bi: bool = False, size: str = "M30") -> dict[str, Any]:
    """A GET /groups/{id}/clusters/{name} body shaped like the v2 API's."""
    return {
        "id": "6217f7fff7957854e2d09179",
        "groupId": PROJECT_ID,
        "name": name,
        "clusterType": "REPLICASET",
        "mongoDBMajorVersion": "7.0",
        "mongoDBVersion": "7.0.12",
        "stateName": "IDLE",
        "paused": False,
        "biConnector": {"enabled": bi, "readPreference": "secondary"},
        "connectionStrings": {"standardSrv": f"mongodb+srv://{name}.abcde.mongodb.net"},
        "replicationSpecs": [
            {
                "id": "6217f7fff7957854e2d0917a",
                "zoneName": "Zone 1",
                "regionConfigs": [
                    {
                        "providerName": "AWS",
                        "regionName": "US_EAST_1",
                        "priority": 7,
                        "electableSpecs": {"instanceSize": size, "nodeCount": 3, "diskIOPS": 3000},
                        "readOnlySpecs": {"instanceSize": size, "nodeCount": 0},
                        "analyticsSpecs": {"instanceSize": size, "nodeCount": 0},
                    }
                ],
            }
        ],
    }


def shared_cluster(name: str, size: str = "M0") -> dict[str, Any]:
    body = dedicated_cluster(name)
    body["replicationSpecs"][0]["regionConfigs"] = [
        {
            "providerName": "TENANT",
            "backingProviderName": "AWS",
            "regionName": "US_EAST_1",
            "priority": 7,
            "electableSpecs": {"instanceSize": size},
        }
    ]
    return body


def atlas_error(status: int, code: str, detail: str) -> tuple[int, dict[str, Any]]:
    return status, {"detail": detail, "error": status, "errorCode": code, "parameters": [], "reason": "Bad Request"}


@dataclass
class FakeAtlas:
    public_key: str = "pubkey"
    private_key: str = "priv-0123456789-secret"
    clusters: dict[str, dict[str, Any] | tuple[int, dict[str, Any]]] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    base_url: str = ""

    def handle(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        auth = headers.get("Authorization", "")
        self.requests.append({"path": path, "accept": headers.get("Accept", ""), "auth": auth.split(" ", 1)[0]})
        if not auth.startswith("Digest ") or not self._digest_ok(method, auth):
            nonce = secrets.token_hex(16)
            challenge = f'Digest realm="{REALM}", domain="", nonce="{nonce}", algorithm=MD5, qop="auth", stale=false'
            return (
                401,
                {"error": 401, "errorCode": "NOT_AUTHORIZED", "reason": "Unauthorized"},
                {"WWW-Authenticate": challenge},
            )
        m = re.fullmatch(r"/api/atlas/v2/groups/([^/]+)/clusters/([^/?]+)", path)
        if not m or m.group(1) != PROJECT_ID:
            return 404, {"error": 404, "errorCode": "GROUP_NOT_FOUND", "reason": "Not Found"}, {}
        found = self.clusters.get(m.group(2))
        if found is None:
            return 404, {"error": 404, "errorCode": "CLUSTER_NOT_FOUND", "reason": "Not Found"}, {}
        if isinstance(found, tuple):
            return found[0], found[1], {}
        return 200, found, {}

    def _digest_ok(self, method: str, header: str) -> bool:
        parts = dict(re.findall(r'(\w+)="?([^",]*)"?', header[len("Digest ") :]))
        if parts.get("username") != self.public_key:
            return False
        ha1 = _md5(f"{self.public_key}:{parts.get('realm')}:{self.private_key}")
        ha2 = _md5(f"{method}:{parts.get('uri')}")
        want = _md5(f"{ha1}:{parts.get('nonce')}:{parts.get('nc')}:{parts.get('cnonce')}:{parts.get('qop')}:{ha2}")
        return parts.get("response") == want


@contextmanager
def fake_atlas(**kw: Any) -> Iterator[FakeAtlas]:
    """An HTTP server on 127.0.0.1 in a thread, serving the Atlas cluster endpoint."""
    atlas = FakeAtlas(**kw)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body, extra = atlas.handle("GET", self.path, self.headers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    atlas.base_url = f"http://127.0.0.1:{server.server_address[1]}/api/atlas/v2"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-atlas", daemon=True
    )
    thread.start()
    try:
        yield atlas
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
