"""The router of a deployment: its one stable address, in front of the versions it serves.

An asynchronous HTTP/1.1 reverse proxy, a process of its own (``python -m
nbdeploy.deployment.traffic.router FOLDER``, in a session of its own, so that a kernel or Jupyter
restart stops neither it nor the versions). It sends each request to a version by weight,
at random or sticky by a key (a header or a field of a JSON body, hashed), keeps pools of
keep-alive connections to the versions, mirrors requests to a shadow version without ever
returning its answer, answers ``POST /feedback`` for A/B tests, and counts per version the
requests, errors and latencies that canary analysis and ``nbdeploy ab`` read.

Its configuration is ``router.json`` in the deployment's folder: the core rewrites it
atomically and sends SIGHUP; the router applies it between requests (a weight change is
atomic: every request sees the old or the new split) and reports the generation it runs in
``router-state.json``, with its counters, every half second. There is no control port:
only the file system and signals, so nothing to authenticate but the user's own files.

A version that is removed from the configuration gets no new requests; the ones in flight
finish (``inflight`` in the state shows them). A request that cannot reach a version
(connection refused or reset, or a pooled connection the version closed) is sent again: to
the other versions of the split, then to a warm standby, and when none answers, to all of
them again for about 1.5 s (a worker restarting on its port): predictions are treated as
safe to repeat.

With an API key, the key is checked on a request's head: a request without it is refused
(401, and the connection closes) before a byte of its body is read. Each version answers
only its router: the router sends every request with the version's secret in
``X-Nbdeploy-Upstream`` (see :mod:`nbdeploy.service.upstream_guard`), and drops that
header from what clients send.
"""

CONFIG = "router.json"  # in the deployment's folder, written by the core
STATE = "router-state.json"  # written by the router
STATUS_PATH = "/-/router"  # the router's state (authenticated like everything else)
LIVE_PATH = "/-/router/livez"  # the router itself answers: for its supervisor
LISTEN_FD_ENV = "NBDEPLOY_ROUTER_FD"  # the listening socket a router inherits (the daemon's)
