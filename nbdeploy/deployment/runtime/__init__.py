"""What runs a deployment's processes: the per-user daemon that owns them (:mod:`.daemon`),
its clients (:mod:`.client`), the private Unix sockets between them (:mod:`.channel`), how
the daemon keeps what runs in line with what is wanted (:mod:`.supervision`) and the changes
it makes (:mod:`.operations`), the launcher that forks version servers with the frameworks
preloaded (:mod:`.launcher`, :mod:`.serving`), starting and stopping processes identified by
pid and start time (:mod:`.processes`), and the deployment lock (:mod:`.locks`)."""
