#!/usr/bin/env bash
# make test-docker: lint the images, build them through compose, run the job in them on a tiny model
# and data, and check on the host what a user would: the report, results.json, ownership (root, UID
# 1000 and UID 1234 on the host), the user the job runs as, exit codes, SIGTERM handling, and the GPU
# image's fallback to CPU.
# Extra compose files (e.g. host networking on a registry-less machine) come from $COMPOSE_EXTRA.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
export COMPOSE_FILE="docker-compose.yml:tests/docker/compose.smoke.yml${COMPOSE_EXTRA:+:$COMPOSE_EXTRA}"
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
read -r -a COMPOSE <<<"${COMPOSE:-docker compose}"
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d)
export SMOKE_DIR="$WORK/smoke" REPORTS_DIR="$WORK/reports"
ROOT=$PWD
cleanup() {
  docker rm -f job-smoke-sigterm job-smoke-owner job-smoke-ro job-smoke-launch >/dev/null 2>&1 || true
  for clone in "$WORK"/clone-*; do
    [ -d "$clone" ] && (cd "$clone" && "${COMPOSE[@]}" down -v >/dev/null 2>&1) || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

step "lint: hadolint and compose config"
"$BIN/hadolint" Dockerfile.cpu Dockerfile.gpu
COMPOSE_FILE=docker-compose.yml "${COMPOSE[@]}" --profile '*' config -q
echo "ok"

step "smoke model and data"
"$PY" -m tests.fixtures "$SMOKE_DIR" >/dev/null 2>&1
cat >"$SMOKE_DIR/smoke.yaml" <<YAML
model_name: /smoke/model
data_dir: /smoke/data
max_seq_length: 32
batch_size: 16
learning_rate: 1.0e-2
num_epochs: 2
max_train_samples: 200
max_eval_samples: 50
lora_r: 4
lora_alpha: 8
save_artifacts: true
YAML
chmod -R a+rX "$SMOKE_DIR"
# $REPORTS_DIR does not exist yet: Docker creates it (owned by root) and the entrypoint hands it to
# UID 1000, as for a user whose ./reports is missing. When the caller is not root, make it theirs.
if [ "$(id -u)" -eq 0 ]; then JOB_UID=1000; else JOB_UID=$(id -u); mkdir -p "$REPORTS_DIR"; fi

step "build the CPU image"
"${COMPOSE[@]}" build cpu-job

step "provenance labels"
label() { docker inspect -f "{{index .Config.Labels \"org.opencontainers.image.$1\"}}" ernie-tnews-job:cpu; }
[ "$(label licenses)" = Apache-2.0 ] || fail "no license label"
[ "$(label revision)" = "${GIT_COMMIT:-$(git rev-parse HEAD)}" ] || fail "revision label '$(label revision)' is not the commit"
[ -n "$(label version)" ] || fail "no version label"
echo "revision $(label revision), version $(label version), licenses $(label licenses)"

step "compose run --rm cpu-job"
"${COMPOSE[@]}" run --rm cpu-job 2>&1 | tee "$WORK/cpu.log"
check_report() {
  local report="$REPORTS_DIR/ernie_lora_vs_full_report.md"
  [ -f "$report" ] || fail "no report in $REPORTS_DIR"
  [ -f "$REPORTS_DIR/results.json" ] || fail "no results.json in $REPORTS_DIR"
  grep -q '^| lora (r=4, α=8, dropout=0.1, lr=0.01) | [0-9,]* | [0-9,]* | [0-9.]* | 0\.[0-9]* |' "$report" || fail "lora row not filled"
  grep -q '^| full_finetune (lr=0.01) | [0-9,]* | [0-9,]* | [0-9.]* | 0\.[0-9]* |' "$report" || fail "full_finetune row not filled"
  ! grep -q pending "$report" || fail "report has pending cells"
  [ "$(stat -c %u "$report")" = "$JOB_UID" ] || fail "report not owned by UID $JOB_UID"
  [ "$(stat -c %a "$report")" = 644 ] || fail "report not readable by everyone (mode $(stat -c %a "$report"))"
  job_uid=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["run"]["uid"])' "$REPORTS_DIR/results.json")
  [ "$job_uid" = "$JOB_UID" ] || fail "the job ran as UID $job_uid, expected $JOB_UID"
  echo "report ok: $(grep -c '^| ' "$report") table lines, owner $(stat -c %U:%G "$report") mode 644, job UID $job_uid"
}
check_report
grep -q "device: cpu" "$WORK/cpu.log" || fail "device not reported"

step "predict with the saved models in the image"
for saved in lora/merged lora/adapter full_finetune/model; do
  "${COMPOSE[@]}" run --rm cpu-job predict --model "/app/reports/artifacts/$saved" "天地玄的一是" "日月盈了我不" \
    >"$WORK/predict.out" 2>"$WORK/predict.err" || { cat "$WORK/predict.err"; fail "predict with $saved failed"; }
  "$PY" - "$WORK/predict.out" <<'PYTHON' || fail "predict with $saved: not two JSON lines with label names"
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
assert len(lines) == 2 and all(set(line) == {"sentence", "label", "label_desc", "probability"} for line in lines)
assert all(line["label_desc"].startswith("news_") for line in lines), lines
PYTHON
  echo "predict $saved: $(head -1 "$WORK/predict.out")"
done

step "the config mount and the image's own files are read-only"
for target in /app/configs/x /opt/venv/x /app/job/x; do
  probe=$("${COMPOSE[@]}" run --rm --entrypoint sh cpu-job -c "touch $target 2>/dev/null && echo writable || echo read-only")
  [ "$probe" = read-only ] || fail "$target is $probe"
done
echo "configs and root file system read-only (the job above ran that way)"

step "fresh clones owned by root, UID 1000 and UID 1234: docker compose run --rm cpu-job, no preparation"
if [ "$(id -u)" -ne 0 ]; then
  echo "skipped: making clones owned by other users needs root"
else
  for owner in 0 1000 1234; do
    clone="$WORK/clone-$owner"
    mkdir -p "$clone"
    # The working tree as a clone has it (tracked and new files, nothing ignored), owned by $owner.
    git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$clone"
    chown -R "$owner:$owner" "$clone"
    expected=$([ "$owner" = 0 ] && echo 1000 || echo "$owner")
    (cd "$clone" && env -u REPORTS_DIR COMPOSE_FILE="docker-compose.yml:$ROOT/tests/docker/compose.smoke.yml${COMPOSE_EXTRA:+:$ROOT/$COMPOSE_EXTRA}" \
      "${COMPOSE[@]}" run --name job-smoke-owner cpu-job >"$WORK/owner-$owner.log" 2>&1) || true
    code=$(docker inspect -f '{{.State.ExitCode}}' job-smoke-owner)  # compose's own status is unreliable
    docker rm job-smoke-owner >/dev/null
    [ "$code" = 0 ] || { tail -20 "$WORK/owner-$owner.log"; fail "clone owned by $owner: container exited $code"; }
    report="$clone/reports/ernie_lora_vs_full_report.md"
    [ -f "$report" ] || fail "clone owned by $owner: no report in ./reports"
    [ "$(stat -c %u "$report")" = "$expected" ] || fail "clone owned by $owner: report owned by $(stat -c %u "$report")"
    ran_as=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["run"]["uid"])' "$clone/reports/results.json")
    [ "$ran_as" = "$expected" ] || fail "clone owned by $owner: the job ran as UID $ran_as, expected $expected"
    echo "clone owned by $owner: report owned by $expected, job ran as UID $ran_as, exit 0"
  done
fi

step "a read-only reports mount exits 2 and names the fix"
mkdir -p "$WORK/ro-reports"
code=0
docker run --name job-smoke-ro --network none -v "$WORK/ro-reports:/app/reports:ro" -v "$SMOKE_DIR:/smoke:ro" \
  -e JOB_CONFIG=/smoke/smoke.yaml ernie-tnews-job:cpu >"$WORK/ro.log" 2>&1 || code=$?
docker rm job-smoke-ro >/dev/null
cat "$WORK/ro.log"
[ "$code" = 2 ] || fail "read-only reports mount: exit $code, expected 2"
grep -q "cannot write to reports: Read-only file system; it is mounted read-only: mount it read-write: drop ':ro'" "$WORK/ro.log" || fail "no fix in the message"
echo "exit 2 with the fix"

step "output to object storage from the image (SeaweedFS on 127.0.0.1, host network)"
mkdir -p "$WORK/s3"
"$PY" -m tests.object_store "$WORK/s3" smoke-bucket >"$WORK/s3.log" 2>&1 &
store_pid=$!
for _ in $(seq 120); do [ -f "$WORK/s3/endpoint" ] && break; sleep 0.5; done
[ -f "$WORK/s3/endpoint" ] || { cat "$WORK/s3.log"; fail "the object store did not start"; }
endpoint=$(cat "$WORK/s3/endpoint")
code=0
docker run --rm --network host --read-only --tmpfs /tmp --tmpfs /home/job --user 1000:1000 \
  -v "$SMOKE_DIR:/smoke:ro" -e JOB_CONFIG=/smoke/smoke.yaml -e AWS_ENDPOINT_URL="$endpoint" \
  -e AWS_ACCESS_KEY_ID=writer -e AWS_SECRET_ACCESS_KEY=writer-secret -e AWS_DEFAULT_REGION=us-east-1 \
  ernie-tnews-job:cpu run --output-dir s3://smoke-bucket/run >"$WORK/s3-job.log" 2>&1 || code=$?
tail -3 "$WORK/s3-job.log"
"$PY" - "$endpoint" <<'PYTHON' || { kill "$store_pid"; fail "no complete report in s3://smoke-bucket/run"; }
import json, sys
from tests.object_store import ObjectStore
fs = ObjectStore(sys.argv[1]).filesystem()
combined = json.loads(fs.cat_file("smoke-bucket/run/results.json"))
assert combined["missing_runs"] == [] and len(combined["runs"]) == 2, combined["missing_runs"]
assert fs.exists("smoke-bucket/run/ernie_lora_vs_full_report.md")
print("s3://smoke-bucket/run:", ", ".join(sorted(p.rsplit("/", 1)[-1] for p in fs.ls("smoke-bucket/run"))))
PYTHON
kill "$store_pid"; wait "$store_pid" 2>/dev/null || true
[ "$code" = 0 ] || fail "job with s3:// output: exit $code"

step "make run-cpu exits with the job's own exit code"
code=0
make -s run-cpu CONFIG=/smoke/missing.yaml COMPOSE="${COMPOSE[*]}" >"$WORK/make.log" 2>&1 || code=$?
tail -2 "$WORK/make.log"
[ "$code" = 2 ] || fail "make run-cpu with a missing config: exit $code, expected the job's 2"
grep -q "config file /smoke/missing.yaml does not exist" "$WORK/make.log" || fail "no message from the job"
echo "exit 2"

step "SIGTERM reaches the job: it stops at a step boundary with exit 143"
rm -rf "${REPORTS_DIR:?}"/*
"${COMPOSE[@]}" run -d --name job-smoke-sigterm cpu-job run --set num_epochs=400 --strategy full_finetune >/dev/null
for _ in $(seq 120); do docker logs job-smoke-sigterm 2>&1 | grep "step 10/" >/dev/null && break; sleep 1; done
docker stop -t 20 job-smoke-sigterm >/dev/null
code=$(docker wait job-smoke-sigterm)
# Read the log from a file: `docker logs | grep -q` can end in SIGPIPE (grep quits at the first match),
# which pipefail turns into a failure.
docker logs job-smoke-sigterm >"$WORK/sigterm.log" 2>&1
tail -3 "$WORK/sigterm.log"
[ "$code" = 143 ] || fail "exit code $code after SIGTERM, expected 143"
grep -q "stopping: finished runs' results are kept" "$WORK/sigterm.log" || fail "no shutdown message"
[ ! -f "$REPORTS_DIR/ernie_lora_vs_full_report.md" ] || fail "an interrupted run wrote a report"
echo "exit 143, no report"

step "build the GPU image with the CPU Paddle wheel (CUDA cannot run here) and run it"
rm -rf "${REPORTS_DIR:?}"/*
PADDLE_PACKAGE=paddlepaddle PADDLE_INDEX_URL='' "${COMPOSE[@]}" build gpu-job
"${COMPOSE[@]}" run --rm gpu-job 2>&1 | tee "$WORK/gpu.log"
grep -q "auto: this Paddle build has no CUDA support, falling back to CPU" "$WORK/gpu.log" || fail "no CPU fallback message"
check_report

step "GPU image: the job keeps the groups that own the GPU device nodes, and no others"
# A device node owned by group 44 (video) with mode 0660, as some hosts make /dev/nvidia*; `python` on
# PATH is replaced by a probe that prints the groups the entrypoint handed over.
if [ "$(id -u)" -ne 0 ]; then
  echo "skipped: making a device node needs root"
else
  mknod "$WORK/nvidia0" c 1 3 && chgrp 44 "$WORK/nvidia0" && chmod 660 "$WORK/nvidia0"
  mkdir -p "$WORK/probe" && printf '#!/bin/sh\nid -G\n' >"$WORK/probe/python" && chmod 755 "$WORK/probe/python"
  with_device=$(docker run --rm --network none --device "$WORK/nvidia0:/dev/nvidia0" -v "$WORK/probe:/probe:ro" \
    -v "$REPORTS_DIR:/app/reports" -e PATH=/probe:/opt/venv/bin:/usr/bin:/bin ernie-tnews-job:gpu run)
  [ "$with_device" = "$JOB_UID 44" ] || fail "groups with a group-owned /dev/nvidia0: '$with_device', expected '$JOB_UID 44'"
  without=$(docker run --rm --network none -v "$WORK/probe:/probe:ro" -v "$REPORTS_DIR:/app/reports" \
    -e PATH=/probe:/opt/venv/bin:/usr/bin:/bin ernie-tnews-job:gpu run)
  [ "$without" = "$JOB_UID" ] || fail "groups without GPU devices: '$without', expected only $JOB_UID"
  echo "groups with /dev/nvidia0 of group 44: $with_device; without: $without"
fi

step "GPU image: launch (data-parallel) stops with 143 on docker stop and keeps the ranks' logs"
rm -rf "${REPORTS_DIR:?}"/*
"${COMPOSE[@]}" run -d --name job-smoke-launch gpu-job launch --nproc_per_node 1 /app/job/__main__.py run \
  --set num_epochs=400 --strategy full_finetune >/dev/null
for _ in $(seq 180); do grep -s "step 10/" "$REPORTS_DIR/launch-logs/workerlog.0" >/dev/null && break; sleep 1; done
docker stop -t 30 job-smoke-launch >/dev/null
code=$(docker wait job-smoke-launch)
docker logs job-smoke-launch >"$WORK/launch.log" 2>&1
docker rm job-smoke-launch >/dev/null
tail -3 "$REPORTS_DIR/launch-logs/workerlog.0"
[ "$code" = 143 ] || { tail -20 "$WORK/launch.log"; fail "launch: exit code $code after SIGTERM, expected 143"; }
grep -q "stopping: finished runs' results are kept" "$REPORTS_DIR/launch-logs/workerlog.0" || fail "launch: no shutdown message in the rank's log"
echo "exit 143, rank log in reports/launch-logs"

step "image sizes"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep ernie-tnews-job
echo
echo "test-docker: all checks passed"
