"""Experiment tracking (MLflow): the jobs' runs, their lineage, the model registry."""
