#!/usr/bin/env bash
# e2e-k8s.sh runs keygate's end-to-end test against a real Kubernetes API
# server: Debian's etcd-server (installed when missing), kube-apiserver built
# from the Go module proxy by tools/build-kube-apiserver.sh (cached after the
# first build, ~6-7 minutes on 2 cores), and the injector in-process with
# KEYGATE_INJECT_NATIVE_SIDECAR=auto pointed at that API server (it must
# choose native sidecars from the server's version).
# Everything listens on 127.0.0.1 and is stopped when the test ends.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v etcd >/dev/null 2>&1; then
	echo "e2e-k8s: installing etcd-server" >&2
	sudo=""
	if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
fi
# (On a host with systemd the package may also start a system etcd on the
# default ports; the test runs its own on free loopback ports.)

apiserver="$("$root/tools/build-kube-apiserver.sh")"

cd "$root/tools/deploytest"
KEYGATE_KUBE_APISERVER="$apiserver" KEYGATE_ETCD="$(command -v etcd)" \
	go test -tags e2ek8s -count=1 -timeout 6m -run '^TestE2EKubernetes$' -v . "$@"
