#!/usr/bin/env bash
# make test-docker: lint the images, build them through compose, run the job in them on a tiny model
# and data, and check on the host what a user would: the report, results.json, ownership, the user,
# SIGTERM handling, and the GPU image's fallback to CPU.
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
cleanup() { docker rm -f job-smoke-sigterm >/dev/null 2>&1 || true; rm -rf "$WORK"; }
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
YAML
chmod -R a+rX "$SMOKE_DIR"
# The container runs as the caller's UID, or as 1000 when the caller is root (never as root).
if [ "$(id -u)" -eq 0 ]; then export JOB_UID=1000 JOB_GID=1000; else export JOB_UID=$(id -u) JOB_GID=$(id -g); fi
mkdir -p "$REPORTS_DIR" && chown "$JOB_UID:$JOB_GID" "$REPORTS_DIR"

step "build the CPU image"
"${COMPOSE[@]}" build cpu-job

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
  echo "report ok: $(grep -c '^| ' "$report") table lines, owner $(stat -c %U:%G "$report") mode 644"
}
check_report
grep -q "device: cpu" "$WORK/cpu.log" || fail "device not reported"

step "the container user is not root, the config mount is read-only"
uid=$("${COMPOSE[@]}" run --rm --entrypoint id cpu-job -u)
[ "$uid" != 0 ] || fail "container runs as root"
probe=$("${COMPOSE[@]}" run --rm --entrypoint sh cpu-job -c 'touch /app/configs/x 2>/dev/null && echo writable || echo read-only')
[ "$probe" = read-only ] || fail "config mount is $probe"
echo "uid $uid, configs read-only"

step "SIGTERM reaches the job: it stops at a step boundary with exit 143"
rm -rf "${REPORTS_DIR:?}"/*
"${COMPOSE[@]}" run -d --name job-smoke-sigterm cpu-job run --set num_epochs=400 --strategy full_finetune >/dev/null
for _ in $(seq 120); do docker logs job-smoke-sigterm 2>&1 | grep -q "step 10/" && break; sleep 1; done
docker stop -t 20 job-smoke-sigterm >/dev/null
code=$(docker wait job-smoke-sigterm)
docker logs job-smoke-sigterm 2>&1 | tail -3
[ "$code" = 143 ] || fail "exit code $code after SIGTERM, expected 143"
docker logs job-smoke-sigterm 2>&1 | grep -q "stopping: finished runs' results are kept" || fail "no shutdown message"
[ ! -f "$REPORTS_DIR/ernie_lora_vs_full_report.md" ] || fail "an interrupted run wrote a report"
echo "exit 143, no report"

step "build the GPU image with the CPU Paddle wheel (CUDA cannot run here) and run it"
rm -rf "${REPORTS_DIR:?}"/*
PADDLE_PACKAGE=paddlepaddle PADDLE_INDEX_URL='' "${COMPOSE[@]}" build gpu-job
"${COMPOSE[@]}" run --rm gpu-job 2>&1 | tee "$WORK/gpu.log"
grep -q "auto: this Paddle build has no CUDA support, falling back to CPU" "$WORK/gpu.log" || fail "no CPU fallback message"
check_report

step "image sizes"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep ernie-tnews-job
echo
echo "test-docker: all checks passed"
