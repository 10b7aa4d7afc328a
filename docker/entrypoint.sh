#!/bin/sh
# The images' entrypoint. Started as root (the default for `docker run` and compose), it only adopts
# the owner of the mounted reports folder and drops to that user, so the files it writes belong to
# whoever owns the folder on the host; the job itself never runs as root. A root-owned folder (one
# Docker just created, or a root user's clone) is handed to the image's user, UID 1000, first.
# Started as another user (Kubernetes runAsUser, --user), it changes nothing.
# `launch ARGS` runs `python -m job launch ARGS` (paddle.distributed.launch, data-parallel), anything else
# `python -m job ARGS`.
# `exec` twice: Python ends up as PID 1 and receives SIGTERM itself (exit 143 on docker stop).
set -eu
if [ "${1:-}" = launch ]; then
  shift
  set -- -m job launch "$@"
else
  set -- -m job "$@"
fi
reports=${JOB_REPORTS_DIR:-/app/reports}
default_uid=1000
default_gid=1000

if [ "$(id -u)" != 0 ]; then
  exec python "$@"
fi

mkdir -p "$reports" 2>/dev/null || true
uid=$(stat -c %u "$reports")
gid=$(stat -c %g "$reports")
if [ "$uid" = 0 ]; then
  # Read-only mounts refuse this; the job then stops with exit 2 and says how to fix the mount.
  chown "$default_uid:$default_gid" "$reports" 2>/dev/null || true
  uid=$default_uid
  gid=$default_gid
fi
# Where the host makes the GPU device nodes group-owned (a `video` or `nvidia` group, mode 0660), the job
# keeps those groups, or CUDA finds no device; every other supplementary group, and root's, is dropped.
device_groups=$(stat -c %g /dev/nvidia* 2>/dev/null | grep -vx 0 | sort -un | paste -sd, - || true)
if [ -n "$device_groups" ]; then
  exec setpriv --reuid="$uid" --regid="$gid" --groups="$device_groups" --no-new-privs -- python "$@"
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --no-new-privs -- python "$@"
