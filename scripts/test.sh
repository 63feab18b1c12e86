#!/usr/bin/env bash
# The whole keygate test suite, as CI runs it. On a fresh Debian machine with
# Go it first installs what the tests need (redis-server, prometheus for
# promtool, etcd-server, nginx, chromium for the browser tests) with apt-get, as
# root or through sudo.
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh --no-k8s   skip the end-to-end test against kube-apiserver
#                                (its first run builds kube-apiserver: ~7 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
k8s=1
[ "${1:-}" = "--no-k8s" ] && k8s=0

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk) # cmd/loadtest's generator and its test
if [ "$k8s" = 1 ]; then command -v etcd >/dev/null 2>&1 || need+=(etcd-server); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts these as services on their default ports; the tests run
  # their own on free loopback ports and do not need them.
  for svc in redis-server prometheus etcd nginx; do
    ($sudo systemctl stop "$svc" || $sudo service "$svc" stop) >/dev/null 2>&1 || true
  done
fi

echo "== gofmt" >&2
out=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
if [ -n "$out" ]; then echo "gofmt would change:"; echo "$out"; exit 1; fi
echo "== go vet" >&2
go vet ./...
echo "== staticcheck" >&2
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
# One package at a time: the fault tests assert latencies (a paused Redis
# must not hold a request past its deadline + 50 ms) that a second package
# competing for the two cores would blur.
echo "== go test (race)" >&2
KEYGATE_TEST_REDIS=require KEYGATE_TEST_PROMETHEUS=require KEYGATE_TEST_BROWSER=require KEYGATE_TEST_NGINX=require go test -race -count=1 -p 1 ./...
echo "== deploy checks (dashboard, rules, manifests, kustomize, Dockerfile)" >&2
(cd deploy && go vet ./... && go test -count=1 ./...)
(cd tools/deploytest && go vet ./... && go vet -tags e2ek8s ./... && go test -race -count=1 ./...)
if [ "$k8s" = 1 ]; then
  echo "== end to end against kube-apiserver" >&2
  ./scripts/e2e-k8s.sh
fi
