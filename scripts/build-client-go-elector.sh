#!/usr/bin/env bash
# Build (once) tests/support/clientgo/main.go, a real client-go leader-election
# contender, against the client-go vendored in the same Debian kubernetes
# source package kube-apiserver is built from (v1.20.2), and cache the binary
# beside kube-apiserver. The interop tests run it against konductor's Lease.
#
# The binary's name carries a hash of main.go, so editing the program rebuilds
# it. The source tarball is the one build-kube-apiserver.sh keeps in
# $CACHE_DIR/src (fetched through it when missing): no second download.
#
# Prints the path of the cached binary on stdout. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE_DIR="${KONDUCTOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/konductor}"
MAIN="$ROOT/tests/support/clientgo/main.go"
HASH="$(sha256sum "$MAIN" | cut -c1-12)"
BIN="$CACHE_DIR/clientgo-elector-v1.20.2-$HASH"
log() { echo "[build-client-go-elector] $*" >&2; }

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

TARBALL="$(bash "$ROOT/scripts/build-kube-apiserver.sh" --fetch-source)"
command -v go >/dev/null 2>&1 || { log "go is missing (apt-get install golang-go)"; exit 1; }
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$REFLECT2" ] || { log "$REFLECT2 is missing (apt-get install golang-github-modern-go-reflect2-dev)"; exit 1; }

mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "$CACHE_DIR/build-clientgo.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/home"
cd "$WORK"
log "extracting vendor/ and staging/ from $TARBALL"
tar xzf "$TARBALL" kubernetes-1.20.2/vendor kubernetes-1.20.2/staging
cd kubernetes-1.20.2
# Same reflect2 swap as for kube-apiserver (Go 1.19 and reflect2 v1.0.1 crash).
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$REFLECT2" vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/*_test.go vendor/github.com/modern-go/reflect2/go.mod
mkdir -p .go/src/k8s.io cmd/konductor-clientgo-elector
ln -sfn ../../.. .go/src/k8s.io/kubernetes
cp "$MAIN" cmd/konductor-clientgo-elector/main.go
log "building (about a minute on 2 cores)"
cd .go/src/k8s.io/kubernetes
GOPATH="$WORK/kubernetes-1.20.2/.go" GO111MODULE=off CGO_ENABLED=0 HOME="$WORK/home" \
  GOCACHE="$WORK/gocache" go build -o "$BIN.tmp" ./cmd/konductor-clientgo-elector >&2
mv "$BIN.tmp" "$BIN"
log "cached $BIN"
echo "$BIN"
