"""minio-init's job on the S3 stand-in: create the buckets in $BUCKETS (idempotent).

moto accepts any credentials, so the account ftlab uses needs no creating; the stand-in is reached
with $FTLAB_S3_ACCESS_KEY / $FTLAB_S3_SECRET_KEY, the same keys the services use.
"""
import os

import boto3

s3 = boto3.client("s3", endpoint_url=os.environ.get("S3_ENDPOINT", "http://minio:9000"), region_name="us-east-1",
                  aws_access_key_id=os.environ["FTLAB_S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["FTLAB_S3_SECRET_KEY"])
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
buckets = os.environ["BUCKETS"].split()
for b in buckets:
    if b not in have:
        s3.create_bucket(Bucket=b)
print(f"minio-init (s3 stand-in): buckets {buckets} ready", flush=True)
