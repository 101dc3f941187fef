"""Deployments: versions in the state store, supervised server processes, strategies."""
