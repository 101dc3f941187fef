#!/usr/bin/env bash
# A Docker engine and a registry-free base image for tests/test_image.py and bench/image.py.
#
# Prints one line, DOCKER_HOST=..., naming an engine that answers:
#   1. the one DOCKER_HOST already names, or the default socket, when it answers;
#   2. else, as root on Debian/Ubuntu: Debian's docker.io (and mmdebstrap) installed when
#      missing, and a private dockerd started with its state under $NBDEPLOY_DOCKER_DIR
#      (default /var/tmp/nbdeploy-docker; kept between runs, so images stay cached).
# Then makes sure the engine has the base image $NBDEPLOY_BASE_IMAGE (default
# nbdeploy-test/python3:bookworm): a minimal Debian with python3 and python3-venv, made by
# mmdebstrap from Debian's packages (no registry is needed) and cached as a tar file.
# Without an engine and without root it prints nothing and exits 0: the tests then skip
# (and fail when CI is set).
set -euo pipefail

DIR=${NBDEPLOY_DOCKER_DIR:-/var/tmp/nbdeploy-docker}
BASE=${NBDEPLOY_BASE_IMAGE:-nbdeploy-test/python3:bookworm}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nbdeploy
log() { echo "engine.sh: $*" >&2; }

answers() { DOCKER_HOST="$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

host=""
if command -v docker >/dev/null; then
  for candidate in "${DOCKER_HOST:-}" unix:///var/run/docker.sock "unix://$DIR/docker.sock"; do
    if [ -n "$candidate" ] && answers "$candidate"; then host=$candidate; break; fi
  done
fi

if [ -z "$host" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "no Docker engine answers and this is not root on Debian: the image tests will skip"
    exit 0
  fi
  if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null; then
    log "installing docker.io and mmdebstrap (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker.io mmdebstrap iptables >/dev/null
  fi
  mkdir -p "$DIR"
  log "starting a private dockerd (state in $DIR)"
  nohup dockerd --storage-driver=overlay2 --data-root "$DIR/root" --exec-root "$DIR/exec" \
    --pidfile "$DIR/dockerd.pid" -H "unix://$DIR/docker.sock" >"$DIR/dockerd.log" 2>&1 &
  host="unix://$DIR/docker.sock"
  for _ in $(seq 1 120); do answers "$host" && break; sleep 0.25; done
  if ! answers "$host"; then
    log "dockerd did not start; its log:"; tail -20 "$DIR/dockerd.log" >&2; exit 1
  fi
fi

if ! DOCKER_HOST=$host docker image inspect "$BASE" >/dev/null 2>&1; then
  tar="$CACHE/base-bookworm-python3.tar"
  if [ ! -s "$tar" ]; then
    if ! command -v mmdebstrap >/dev/null; then
      log "the base image $BASE is missing and mmdebstrap is not installed"; exit 1
    fi
    log "making the base image $BASE with mmdebstrap (about 30 s, cached in $tar)"
    mkdir -p "$CACHE"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' bookworm "$CACHE/partial-base.tar" >&2
    mv "$CACHE/partial-base.tar" "$tar"
  fi
  DOCKER_HOST=$host docker import "$tar" "$BASE" >/dev/null
fi
echo "DOCKER_HOST=$host"
