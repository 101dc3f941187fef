"""What runs a deployment's processes: the per-user daemon that owns them (:mod:`.daemon`),
its clients (:mod:`.client`), the private Unix sockets between them (:mod:`.channel`), and
how the daemon keeps what runs in line with what is wanted (:mod:`.supervision`)."""
