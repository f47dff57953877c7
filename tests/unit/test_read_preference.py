"""Every connection reads from the primary, whatever the URI asks (tasks/mongo.connect).

Why: the clone must read at or after the change stream's start point, the cutover's drain target is the
newest write in the primary's oplog, and verification re-reads must see current documents; a lagging
secondary named by ``readPreference=secondary`` in a user's URI would break all three.
"""

from __future__ import annotations

import pytest
from pymongo import ReadPreference

from tasks.mongo import connect

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("pref", ["secondary", "secondaryPreferred", "nearest"])
def test_a_uri_read_preference_is_overridden_by_primary(pref: str) -> None:
    client = connect(f"mongodb://127.0.0.1:1/?readPreference={pref}", side="source", ping=False)
    try:
        assert client.read_preference == ReadPreference.PRIMARY
    finally:
        client.close()
