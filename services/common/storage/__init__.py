"""Object storage (local folder or S3) and the artifacts committed in it."""
