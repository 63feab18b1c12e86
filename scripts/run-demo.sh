#!/usr/bin/env bash
# Runs keygate on the embedded store in front of the demo upstream.
# Data path :8000, operator API 127.0.0.1:9091 (token: dev-admin-token),
# metrics :9090. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/keygate ./cmd/keygate
go build -o bin/demo-upstream ./cmd/demo-upstream
bin/demo-upstream -addr 127.0.0.1:8080 &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
KEYGATE_UPSTREAM_URL=${KEYGATE_UPSTREAM_URL:-http://127.0.0.1:8080} \
KEYGATE_ADMIN_TOKEN=${KEYGATE_ADMIN_TOKEN:-dev-admin-token} \
KEYGATE_LOG_FORMAT=${KEYGATE_LOG_FORMAT:-console} \
  bin/keygate serve
