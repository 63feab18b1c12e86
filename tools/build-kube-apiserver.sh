#!/usr/bin/env bash
# build-kube-apiserver.sh builds kube-apiserver from the Go module proxy with the
# wrapper module in tools/kube-apiserver and prints the binary's path. The build
# takes minutes on a small machine, so the binary is cached by version and reused.
#
# Usage: tools/build-kube-apiserver.sh            # prints the path on stdout
# Env:   KEYGATE_CACHE_DIR  cache directory (default $HOME/.cache/keygate)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/kube-apiserver"
version="$(cd "$mod" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
if [[ -z "$version" ]]; then
	echo "build-kube-apiserver: cannot read the k8s.io/kubernetes version from $mod/go.mod" >&2
	exit 1
fi

cache="${KEYGATE_CACHE_DIR:-$HOME/.cache/keygate}"
out="$cache/kube-apiserver-$version"
if [[ -x "$out" ]] && [[ "$("$out" --version 2>/dev/null)" == "Kubernetes $version" ]]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
echo "build-kube-apiserver: building kube-apiserver $version into $out (several minutes)" >&2
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
	cd "$mod"
	# Stamp the version as Kubernetes' own build does; without it the binary
	# reports v0.0.0-master.
	minor="${version#v1.}"
	minor="${minor%%.*}"
	pkg=k8s.io/component-base/version
	CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
		-o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver
)
mv "$tmp" "$out"
trap - EXIT
echo "$out"
