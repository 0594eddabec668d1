"""What a request and a deployment may say: parameters, validation, errors, names, settings."""
