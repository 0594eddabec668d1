"""Start ftlab's MLflow tracking server in the compose stack (deploy/Dockerfile.mlflow).

Before ``mlflow server`` it makes what the server expects to exist, idempotently, so a first
``up`` and every later one are the same: the two databases in the stack's PostgreSQL (runs and
the model registry in ``mlflow``, the basic-auth users in ``mlflow_auth``; Postgres is shared
with Prefect, each has its own databases), and the artifact bucket in the stack's S3 store. Then
it execs ``mlflow server --app-name basic-auth``: every call but ``/health`` needs the admin
credentials from .env (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which MLflow's
clients in the services and the worker read from their environment).

Settings (environment, set by docker-compose.gpu.yml): POSTGRES_HOST, POSTGRES_USER,
POSTGRES_PASSWORD, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, MLFLOW_S3_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, FTLAB_MLFLOW_BUCKET. Every missing one is reported at
once, before anything is touched."""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

REQUIRED = ["POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD", "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "FTLAB_MLFLOW_BUCKET"]
DATABASES = ("mlflow", "mlflow_auth")
PORT = 5000


def log(msg: str) -> None:
    print(f"ftlab-mlflow: {msg}", flush=True)


def db_url(env: dict[str, str], name: str, driver: str = "") -> str:
    """A libpq URL, or with ``driver`` SQLAlchemy's (``+psycopg2``: SQLAlchemy 2.1 reads a bare
    ``postgresql://`` as psycopg 3, which this image does not carry)."""
    from urllib.parse import quote
    return (f"postgresql{driver}://{quote(env['POSTGRES_USER'])}:{quote(env['POSTGRES_PASSWORD'], safe='')}"
            f"@{env['POSTGRES_HOST']}:5432/{name}")


def ensure_databases(env: dict[str, str], timeout_s: float = 120) -> None:
    import psycopg2
    deadline = time.monotonic() + timeout_s
    while True:   # compose waits for Postgres' healthcheck; a restart of Postgres alone does not
        try:
            conn = psycopg2.connect(db_url(env, "postgres"), connect_timeout=5)
            break
        except psycopg2.OperationalError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"ftlab-mlflow: PostgreSQL at {env['POSTGRES_HOST']} unreachable: {e}")
            time.sleep(2)
    # CREATE DATABASE cannot run in a transaction: autocommit, and no `with conn` (psycopg2
    # opens a transaction block for it even in autocommit mode)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    log(f"created database {name}")
    finally:
        conn.close()


def ensure_bucket(env: dict[str, str]) -> None:
    import boto3
    from botocore.exceptions import ClientError
    s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    try:
        s3.head_bucket(Bucket=env["FTLAB_MLFLOW_BUCKET"])
    except ClientError:
        s3.create_bucket(Bucket=env["FTLAB_MLFLOW_BUCKET"])
        log(f"created bucket {env['FTLAB_MLFLOW_BUCKET']}")


def auth_config(env: dict[str, str]) -> Path:
    """MLflow's basic-auth settings: the admin from .env (created on the first start only, as
    MLflow does; rotate it with MLflow's update-password API), users in Postgres, and no access
    for anyone else."""
    path = Path.home() / "basic_auth.ini"
    path.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                    f"database_uri = {db_url(env, 'mlflow_auth', '+psycopg2')}\n"
                    f"admin_username = {env['MLFLOW_TRACKING_USERNAME']}\n"
                    f"admin_password = {env['MLFLOW_TRACKING_PASSWORD']}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    path.chmod(0o600)
    return path


def main() -> int:
    env = dict(os.environ)
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        log("missing settings: " + ", ".join(missing))
        return 2
    ensure_databases(env)
    ensure_bucket(env)
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(env))
    # the CSRF key of the auth app's forms must be stable across restarts and secret: derived
    # from the admin password rather than one more secret in .env
    os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY",
                          hashlib.sha256(b"ftlab-mlflow-csrf:" + env["MLFLOW_TRACKING_PASSWORD"].encode()).hexdigest())
    argv = ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", str(PORT),
            "--backend-store-uri", db_url(env, "mlflow", "+psycopg2"),
            # artifacts through the server (the clients need no S3 credentials), stored in S3
            "--serve-artifacts", "--artifacts-destination", f"s3://{env['FTLAB_MLFLOW_BUCKET']}/",
            "--workers", os.environ.get("FTLAB_MLFLOW_WORKERS", "2")]
    log(f"mlflow server on :{PORT}, runs in postgres/{DATABASES[0]}, artifacts in s3://{env['FTLAB_MLFLOW_BUCKET']}/")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
