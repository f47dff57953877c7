"""The URI of livemigrate's unauthenticated probe (tasks/mongo.py ``access_control_enforced``): the same
hosts, database and options, with no user, password or authentication option (MongoDB connection-string
format: ``mongodb[+srv]://[user:password@]host[:port][,host...][/[db]][?options]``)."""

from __future__ import annotations

import pytest
from pymongo.uri_parser import parse_uri

from tasks.mongo import without_credentials

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://h:27017", "mongodb://h:27017"),
        ("mongodb://u:p%40ss@h1:1,h2:2/app", "mongodb://h1:1,h2:2/app"),
        (
            "mongodb://u:pw@[::1]:27017/?authSource=admin&replicaSet=rs0&authMechanism=SCRAM-SHA-256&tls=true",
            "mongodb://[::1]:27017/?replicaSet=rs0&tls=true",
        ),
        (
            "mongodb+srv://u:pw@cluster0.example.net/?retryWrites=true",
            "mongodb+srv://cluster0.example.net/?retryWrites=true",
        ),
        (
            "mongodb://h/?authMechanism=MONGODB-X509&tlsCertificateKeyFile=/c.pem",
            "mongodb://h/?tlsCertificateKeyFile=/c.pem",
        ),
        ("mongodb://u@h/?AUTHSOURCE=x;authMechanismProperties=A:B", "mongodb://h/"),
    ],
)
def test_credentials_and_auth_options_are_left_out(uri: str, expected: str) -> None:
    stripped = without_credentials(uri)
    assert stripped == expected
    if not uri.startswith("mongodb+srv"):  # parsing an SRV URI would look its hosts up
        parsed = parse_uri(stripped, validate=False)
        assert parsed["username"] is None and parsed["password"] is None
        assert parsed["nodelist"] == parse_uri(uri, validate=False)["nodelist"]
