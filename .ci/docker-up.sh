#!/usr/bin/env bash
# Registry-less machines only (CI here): start a private Docker engine and make the local base image
# that Dockerfile.cpu/gpu get as BASE_IMAGE, since no registry can be pulled from.
# Prints the variables to export: DOCKER_HOST, DOCKERD_PID, BASE_IMAGE.
set -euo pipefail

STATE=${DOCKER_STATE:-/tmp/job-ci-docker}
BASE_IMAGE=${BASE_IMAGE:-job-ci-base:bookworm}
mkdir -p "$STATE"
export DOCKER_HOST="unix://$STATE/docker.sock"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need dockerd || ! need debootstrap; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    -H "$DOCKER_HOST" --storage-driver=overlay2 --iptables=false --bridge=none \
    >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  # The mirror the machine's apt already uses.
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  root="$STATE/rootfs"
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >"$STATE/debootstrap.log" 2>&1 || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
  # Outbound TLS is intercepted here: the image must trust the same CAs as the host.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
  fi
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
  # pip reads the same trust store as apt inside the image.
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
fi

echo "export DOCKER_HOST=$DOCKER_HOST"
echo "export DOCKERD_PID=$(cat "$STATE/dockerd.pid")"
echo "export BASE_IMAGE=$BASE_IMAGE"
