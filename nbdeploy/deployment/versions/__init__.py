"""Versions of a deployment: building one (build), the MLflow registry (registry),
versions from MLflow models (from_mlflow) and removing old ones (prune)."""
