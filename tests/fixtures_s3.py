"""S3 fixtures, imported into a conftest with ``from tests.fixtures_s3 import moto_server, s3_store  # noqa``."""
from __future__ import annotations

import pytest

from services.common.storage.s3 import S3Store
from services.common.storage.store import BUCKETS
from tests.s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoServer


@pytest.fixture(scope="session")
def moto_server():
    """One moto S3 server for the whole session (starting one takes about a second)."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_store(moto_server):
    """An S3Store on the session's moto server, with every bucket; emptied afterwards, since the
    server outlives the test."""
    moto_server.start()  # an earlier outage test may have left it stopped
    store = S3Store(moto_server.endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, region="us-east-1")
    store.ensure_buckets()
    yield store
    if moto_server.running:  # a stopped server has nothing left to clean
        for bucket in BUCKETS:
            store.delete_prefix(bucket, "")
