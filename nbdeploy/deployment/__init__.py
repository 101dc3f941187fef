"""Deployments: a notebook's function or model served behind a stable address.

Where to look:

- :mod:`.verbs`: what users call (deploy, status, stop, logs, rollback, promote, weights,
  rotate-key, show); the CLI, the magic, the Python API and the REST handlers are thin
  faces over it, and every change it asks for is a request to the daemon.
- :mod:`.runtime`: what runs: the per-user daemon that owns every process and heals what
  dies, its clients and private sockets, the launcher that forks servers, the processes.
- :mod:`.traffic`: where requests go: the router, the rollout strategies (blue-green,
  recreate, canary with its analysis, A/B, shadow), the API key and the versions' secret.
- :mod:`.versions`: what is served: building a version, the MLflow registry, versions of
  MLflow models, pruning old ones.
- :mod:`.store` (deployments, versions, servers and events in SQLite), :mod:`.options`
  (what a deploy accepts) and :mod:`.report` (status as text).
"""
