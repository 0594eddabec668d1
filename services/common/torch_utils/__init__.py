"""Torch-side helpers for the jobs: model loading, MFU, GGUF import."""
