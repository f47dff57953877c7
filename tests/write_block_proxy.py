"""A wire-protocol proxy in front of a real test server that scripts user write blocking.

Why: SecantusDB has no ``setUserWriteBlockMode``; mockupdb cannot hold a migration's
metadata store.  This proxy forwards everything to the real server and answers only
what write blocking adds, as MongoDB 6.0-8.0 does:

- ``setUserWriteBlockMode {global: bool}`` (manual: "setUserWriteBlockMode") sets the
  state, or is refused as the test scripts (Unauthorized 13, CommandNotFound 59);
- while writes are blocked, a write command to a user database (not admin, config or
  local: server source ``WriteBlockingAllowsInternalDatabaseNamespaces``) from a client
  without the ``bypassWriteBlockingMode`` privilege fails with UserWritesBlocked (371);
  the migrator (appName ``livemigrate...``) holds the privilege unless the test says not;
- with access control on (the default), a client that did not authenticate (livemigrate's probe,
  appName ``livemigrate-probe``) is refused ``listDatabases`` with Unauthorized (13) "command
  listDatabases requires authentication" (server source commands.cpp, checkAuthorizationImplPreParse);
  with it off, every client bypasses the block (AuthorizationSessionImpl: mayBypassWriteBlockingMode
  is true without auth) and the probe's listDatabases is answered by the real server;
- ``listCommands`` lists setUserWriteBlockMode where it is supported (the test server's own
  listCommands is not there: the scripted reply lists that one command);
- ``connectionStatus {showPrivileges: true}`` reports an authenticated user and its
  cluster privileges (manual: "connectionStatus", ``authInfo.authenticatedUserPrivileges``).

Two pumps per connection: client to server (inspected; scripted replies are written
back to the client), server to client (raw), so exhaust/streaming hello replies pass.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import bson

from tasks.mongo import PROBE_APP_NAME

OP_QUERY, OP_MSG = 2004, 2013
INTERNAL_DBS = {"admin", "config", "local"}
WRITES = {
    "insert",
    "update",
    "delete",
    "findandmodify",
    "create",
    "createindexes",
    "drop",
    "dropindexes",
    "collmod",
    "renamecollection",
    "dropdatabase",
    "bulkwrite",
    "applyops",
}
USER_WRITES_BLOCKED = {"ok": 0.0, "code": 371, "codeName": "UserWritesBlocked", "errmsg": "User writes blocked"}
# insert, update and delete report it per statement, as every write error (MongoDB 6.0-8.0 write_ops_exec:
# {ok: 1, n: 0, writeErrors: [{index, code, errmsg}]}); findAndModify and DDL commands fail as a whole.
CRUD = {"insert": "documents", "update": "updates", "delete": "deletes"}


@dataclass
class WriteBlockScript:
    """What the proxied server does about write blocking."""

    supported: bool = True  # False: setUserWriteBlockMode is CommandNotFound (59)
    may_block: bool = True  # the migration user holds setUserWriteBlockMode
    may_bypass: bool = True  # ... and bypassWriteBlockingMode
    auth_on: bool = True  # connectionStatus shows an authenticated user
    access_control: bool = True  # the server enforces authentication (off: every client bypasses the block)
    blocked: bool = False
    blocks: list[bool] = field(default_factory=list)  # every accepted setUserWriteBlockMode's `global`
    refused_writes: list[tuple[str, str]] = field(default_factory=list)  # (appName, command) refused with 371


def _read_message(sock: socket.socket) -> bytes | None:
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (length,) = struct.unpack("<i", head)
    rest = _read_exact(sock, length - 4)
    return None if rest is None else head + rest


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _command(msg: bytes) -> tuple[int, int, dict[str, Any] | None]:
    """(requestID, opCode, the command document) of a request; None when it is not a command we read."""
    _, request_id, _, op = struct.unpack("<iiii", msg[:16])
    if op == OP_MSG:
        if msg[20] != 0:  # the body section comes first in what drivers send
            return request_id, op, None
        (size,) = struct.unpack("<i", msg[21:25])
        return request_id, op, bson.decode(msg[21 : 21 + size])
    if op == OP_QUERY:
        end = msg.index(b"\x00", 20) + 1 + 8  # flags, then the collection name, numberToSkip, numberToReturn
        (size,) = struct.unpack("<i", msg[end : end + 4])
        return request_id, op, bson.decode(msg[end : end + size])
    return request_id, op, None


def _reply(request_id: int, doc: dict[str, Any]) -> bytes:
    body = b"\x00" + bson.encode(doc)
    payload = struct.pack("<I", 0) + body
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_MSG) + payload


def backend_of(uri: str) -> tuple[str, int]:
    """(host, port) of a test server's URI (its first host), for :class:`WriteBlockProxy`."""
    host, port = uri.split("//")[1].split("/")[0].split(",")[0].rsplit(":", 1)
    return host, int(port)


class WriteBlockProxy:
    """Listens on a loopback port; forwards to ``backend`` (host, port)."""

    def __init__(self, backend: tuple[str, int], script: WriteBlockScript) -> None:
        self.backend, self.script = backend, script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="wb-proxy").start()

    def uri(self, **options: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in options.items())
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true{extra}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> WriteBlockProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.backend)
            with self._lock:
                self._socks += [client, server]
            conn = {"app": "", "write_lock": threading.Lock()}
            threading.Thread(target=self._upstream, args=(client, server, conn), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, conn), daemon=True).start()

    def _send_client(self, client: socket.socket, conn: dict[str, Any], data: bytes) -> None:
        with conn["write_lock"]:
            client.sendall(data)

    def _downstream(self, server: socket.socket, client: socket.socket, conn: dict[str, Any]) -> None:
        while (msg := _read_message(server)) is not None:
            try:
                self._send_client(client, conn, msg)
            except OSError:
                break
        client.close()

    def _upstream(self, client: socket.socket, server: socket.socket, conn: dict[str, Any]) -> None:
        while (msg := _read_message(client)) is not None:
            request_id, _, doc = _command(msg)
            answer = self._answer(conn, doc) if doc is not None else None
            try:
                if answer is not None:
                    self._send_client(client, conn, _reply(request_id, answer))
                else:
                    server.sendall(msg)
            except OSError:
                break
        server.close()

    def _answer(self, conn: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any] | None:
        """A scripted reply, or None to forward the command to the real server."""
        app = (doc.get("client") or {}).get("application", {}).get("name")
        if app:
            conn["app"] = app
        name = next(iter(doc), "").lower()
        s = self.script
        probe = conn["app"] == PROBE_APP_NAME  # the one client that does not authenticate
        migrator = str(conn["app"]).startswith("livemigrate") and not probe
        if probe and s.access_control and name == "listdatabases":
            return {
                "ok": 0.0,
                "code": 13,
                "codeName": "Unauthorized",
                "errmsg": "command listDatabases requires authentication",
            }
        if name == "setuserwriteblockmode":
            if not s.supported:
                return {"ok": 0.0, "code": 59, "codeName": "CommandNotFound", "errmsg": "no such command"}
            if migrator and not s.may_block:
                return {"ok": 0.0, "code": 13, "codeName": "Unauthorized", "errmsg": "not authorized on admin"}
            s.blocked = bool(doc.get("global"))
            s.blocks.append(s.blocked)
            return {"ok": 1.0}
        if name == "listcommands" and s.supported:
            return {
                "ok": 1.0,
                "commands": {"setUserWriteBlockMode": {"adminOnly": True, "help": "", "requiresAuth": True}},
            }
        if name == "connectionstatus":
            actions = (["setUserWriteBlockMode"] if s.may_block else []) + (
                ["bypassWriteBlockingMode"] if s.may_bypass else []
            )
            users = [{"user": "migrator", "db": "admin"}] if s.auth_on else []
            privileges = [{"resource": {"cluster": True}, "actions": actions}] if s.auth_on else []
            info: dict[str, Any] = {"authenticatedUsers": users, "authenticatedUserRoles": []}
            if doc.get("showPrivileges"):
                info["authenticatedUserPrivileges"] = privileges
            return {"ok": 1.0, "authInfo": info}
        db = str(doc.get("$db", ""))
        bypass = (migrator and s.may_bypass) or not s.access_control  # access control off: everyone bypasses
        if s.blocked and name in WRITES and db not in INTERNAL_DBS and not bypass:
            s.refused_writes.append((str(conn["app"]), name))
            if name in CRUD:
                error = {"code": 371, "errmsg": USER_WRITES_BLOCKED["errmsg"]}
                ordered = doc.get("ordered", True)
                # Statements sent as a document sequence are not read here: one error for them.
                count = 1 if ordered else max(1, len(doc.get(CRUD[name]) or []))
                return {"ok": 1.0, "n": 0, "writeErrors": [{"index": i, **error} for i in range(count)]}
            return dict(USER_WRITES_BLOCKED)
        return None
