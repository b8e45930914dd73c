#!/usr/bin/env bash
# `make docker-test`: build the image, run the compose stack on host networking, train, classify,
# restart, find everything still there, shut it down. Fails loudly on any step.
# Exit 0 with "SKIPPED" where no Docker engine can run (CI then runs the rest).
set -euo pipefail
# vfs copies each image per container: on a busy 2-core machine that outlasts compose's 60 s.
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-600}
cd "$(dirname "$0")/../.."

PROJECT=convlabtest
API=http://127.0.0.1:18000
# The compose file refuses to start without both secrets; the test makes its own.
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')
CONVLAB_API_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export POSTGRES_PASSWORD CONVLAB_API_KEY
AUTH=(-H "Authorization: Bearer $CONVLAB_API_KEY")
BASE_IMAGE=${BASE_IMAGE:-convlab-base:bookworm}
# Host networking cannot publish ports, and an override can only add to `ports`: merge the
# files, then drop them.
MERGED=$(mktemp --suffix=.yml)
COMPOSE=(true)  # The compose command is chosen below, once it is installed.

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; "${COMPOSE[@]}" logs --tail 50 >&2 || true; exit 1; }

step "Docker engine"
# What the test needs and Debian has: installed here when this is Debian and we are root.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
  || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]}"
  (apt-get install -y -q "${missing[@]}" || (apt-get update -q && apt-get install -y -q "${missing[@]}")) \
    >/dev/null || fail "apt-get install ${missing[*]}"
fi
command -v docker-compose >/dev/null && COMPOSE_CLI=(docker-compose) || COMPOSE_CLI=(docker compose)
COMPOSE=("${COMPOSE_CLI[@]}" -p "$PROJECT" -f "$MERGED")
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
    echo "starting dockerd (vfs storage, no iptables, no bridge)"
    (dockerd --storage-driver=vfs --iptables=false --bridge=none >/tmp/convlab-dockerd.log 2>&1 &)
    for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
fi
if ! docker info >/dev/null 2>&1; then
  echo "SKIPPED: make docker-test: no Docker engine can run here, and it cannot be installed"
  echo "SKIPPED: (needs root on Debian for apt-get install docker.io docker-compose debootstrap)"
  exit 0
fi

step "Base image $BASE_IMAGE"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  [ "$BASE_IMAGE" = convlab-base:bookworm ] || fail "base image $BASE_IMAGE is missing"
  rootfs=$(mktemp -d)
  chmod 755 "$rootfs"  # mktemp's 0700 would become the image's /, closed to non-root users.
  echo "debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >/dev/null || fail "debootstrap"
  # Builds reach the registries through this machine's proxy, whose CA the image must trust.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null || fail "docker import"
  rm -rf "$rootfs"
fi

step "Build convlab:latest and the test PostgreSQL image"
build_started=$SECONDS
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt -t convlab:latest . | tail -n 3 \
  || fail "docker build"
echo "convlab:latest built in $((SECONDS - build_started)) s"
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -t convlab-test-postgres:latest -f tests/docker/postgres.Dockerfile tests/docker | tail -n 2 \
  || fail "docker build postgres"

step "Compose file: docker-compose.yml + tests/docker/compose.host.yml, without published ports"
"${COMPOSE_CLI[@]}" -f docker-compose.yml -f tests/docker/compose.host.yml config \
  | python3 -c 'import sys, yaml
document = yaml.safe_load(sys.stdin)
for service in document["services"].values():
    service.pop("ports", None)
yaml.safe_dump(document, sys.stdout)' >"$MERGED" || fail "compose config"

down_all() { "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap 'down_all; rm -f "$MERGED"' EXIT
down_all

wait_for_api() {
  for _ in $(seq 120); do curl -fsS "$API/health" >/dev/null 2>&1 && return 0; sleep 1; done
  fail "the API never answered on $API"
}

step "docker compose up (postgres, migrate, api, worker)"
"${COMPOSE[@]}" up -d --no-build || fail "compose up"
wait_for_api
curl -fsS "${AUTH[@]}" "$API/workers"; echo

step "Submit an experiment and poll it to succeeded"
id=$(curl -fsS "${AUTH[@]}" -X POST "$API/experiments" -H 'content-type: application/json' \
  -d '{"name": "docker smoke", "conv_layers": 1, "filters": 8, "epochs": 2, "train_samples": 2000}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])') || fail "POST /experiments"
echo "experiment $id"
status=""
for _ in $(seq 300); do
  status=$(curl -fsS "${AUTH[@]}" "$API/experiments/$id" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  case "$status" in succeeded) break ;; failed|cancelled) fail "experiment $id ended $status" ;; esac
  sleep 1
done
[ "$status" = succeeded ] || fail "experiment $id still $status"
curl -fsS "${AUTH[@]}" "$API/experiments/$id" | python3 -c 'import json, sys; b = json.load(sys.stdin); print("test accuracy", b["test"]["accuracy"], "on", b["device"])'

step "Classify a Fashion-MNIST test image (an ankle boot)"
png=$(mktemp --suffix=.png)
"${COMPOSE[@]}" exec -T api python -c '
import gzip, io, sys, numpy as np
from PIL import Image
data = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
image = np.frombuffer(data, np.uint8, offset=16)[:784].reshape(28, 28)
buffer = io.BytesIO(); Image.fromarray(image).save(buffer, format="PNG")
sys.stdout.buffer.write(buffer.getvalue())' >"$png" || fail "making a test image"
predict() {
  curl -fsS "${AUTH[@]}" -F "image=@$png" "$API/predict?experiment_id=$id" \
    | python3 -c 'import json, sys; p = json.load(sys.stdin)["predictions"][0]; print(p["class_name"], round(p["confidence"], 3))'
}
predict || fail "POST /predict"

step "The serving protocols in the image: OIP server metadata and readiness, TF Serving's :predict"
curl -fsS "$API/v2" && echo || fail "GET /v2"
curl -fsS "$API/v2/health/ready" && echo || fail "GET /v2/health/ready"
curl -fsS "${AUTH[@]}" -X POST "$API/v1/models/experiment-$id:predict" \
  -d "{\"instances\": [{\"b64\": \"$(base64 -w0 "$png")\"}]}" \
  | python3 -c 'import json, sys; p = json.load(sys.stdin)["predictions"][0]; print("class", p.index(max(p)))' \
  || fail "POST /v1/models/experiment-$id:predict"

step "The dashboard in the image: the experiments page, with the run in its table"
curl -fsS "${AUTH[@]}" -H 'X-Fragment: 1' "$API/ui/experiments" | grep -q "data-experiment-id=\"$id\"" \
  && echo "experiment $id listed" || fail "GET /ui/experiments"

step "docker compose down, then up with two workers: the experiment and its model are still there"
"${COMPOSE[@]}" down || fail "compose down"
"${COMPOSE[@]}" up -d --no-build --scale worker=2 || fail "compose up again"
wait_for_api
for _ in $(seq 60); do
  alive=$(curl -fsS "${AUTH[@]}" "$API/workers" | python3 -c 'import json, sys; print(sum(w["alive"] for w in json.load(sys.stdin)))')
  [ "$alive" = 2 ] && break
  sleep 1
done
[ "$alive" = 2 ] || fail "expected 2 alive workers, found $alive"
echo "workers alive: $alive"
after=$(curl -fsS "${AUTH[@]}" "$API/experiments/$id" | python3 -c 'import json, sys; b = json.load(sys.stdin); print(b["status"], b["model"]["sha256"])')
echo "after restart: $after"
[ "${after%% *}" = succeeded ] || fail "experiment $id lost its state"
predict || fail "POST /predict after restart"
rm -f "$png"

step "Without the key the API answers 401"
code=$(curl -s -o /dev/null -w '%{http_code}' "$API/experiments")
[ "$code" = 401 ] || fail "GET /experiments without a key answered $code"

step "Shut down (volumes removed)"
down_all
echo "docker-test passed"
