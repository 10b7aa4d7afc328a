#!/usr/bin/env bash
# Stop the private Docker engine started by docker-up.sh and clean its mounts.
set -uo pipefail
STATE=${DOCKER_STATE:-/tmp/job-ci-docker}
if [ -f "$STATE/dockerd.pid" ]; then
  pid=$(cat "$STATE/dockerd.pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$pid" 2>/dev/null
fi
grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
exit 0
