from tests.fixtures_s3 import moto_server, s3_store  # noqa: F401
