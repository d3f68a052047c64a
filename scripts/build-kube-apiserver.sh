#!/usr/bin/env bash
# Build (once) a real kube-apiserver from Debian's kubernetes source package and
# cache it, so the test environment can run a real control plane on loopback.
#
# Why build: no registry reachable here serves a prebuilt kube-apiserver, but
# Debian serves its source (v1.20.2, vendored) and a Go toolchain.
#
# Prints the path of the cached binary on stdout. Idempotent: a cached binary
# is reused. Needs root for apt-get (it is skipped when everything is present).
# The downloaded source package is kept in $CACHE_DIR/src and reused;
# `--fetch-source` only makes sure it is there and prints the tarball's path
# (build-client-go-elector.sh builds from the same source).
set -euo pipefail
FETCH_ONLY=0
[ "${1:-}" = --fetch-source ] && FETCH_ONLY=1

CACHE_DIR="${KONDUCTOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/konductor}"
BIN="$CACHE_DIR/kube-apiserver-v1.20.2"
SRC_DIR="$CACHE_DIR/src"
log() { echo "[build-kube-apiserver] $*" >&2; }

need_pkgs=()
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_pkgs+=(etcd-client)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ! -x "$BIN" ]; then
  command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
  command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
  command -v jq >/dev/null 2>&1 || need_pkgs+=(jq)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need_pkgs+=(golang-github-modern-go-reflect2-dev)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

if [ -x "$BIN" ] && [ "$FETCH_ONLY" = 0 ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Source entries: derive deb-src from apt's own deb822 entries (same URIs,
# suites, components and Signed-By; only Types changes), and only those no
# existing entry provides: a duplicate makes apt warn on every later command.
case "$(python3 "$(dirname "$0")/apt-deb-src.py")" in
  changed) apt-get update -qq >&2 ;;
  unchanged) ;;
  *) log "cannot derive deb-src entries (see above)"; exit 1 ;;
esac

# The source package, downloaded once and kept (apt-get source fetches the
# .dsc, the orig tarball and the debian tarball).
tarball() { compgen -G "$SRC_DIR/kubernetes_*.orig.tar.gz" | head -1; }
if [ -z "$(tarball)" ]; then
  log "downloading the kubernetes source package into $SRC_DIR"
  mkdir -p "$SRC_DIR.tmp"
  (cd "$SRC_DIR.tmp" && apt-get source --download-only kubernetes >&2)
  rm -rf "$SRC_DIR" && mv "$SRC_DIR.tmp" "$SRC_DIR"
fi
TARBALL="$(tarball)"
if [ "$FETCH_ONLY" = 1 ]; then
  echo "$TARBALL"
  exit 0
fi
cd "$WORK"
tar xzf "$TARBALL"
cd kubernetes-1.20.2

# Go 1.19 crashes the v1.20 apiserver with the vendored reflect2 v1.0.1;
# swap in Debian's v1.0.2.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/*_test.go vendor/github.com/modern-go/reflect2/go.mod
mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
log "building kube-apiserver (several minutes on 2 cores)"
GOPATH="$PWD/.go" CGO_ENABLED=0 HOME="$(mktemp -d)" make WHAT=cmd/kube-apiserver >&2
cp _output/local/bin/linux/amd64/kube-apiserver "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
log "cached $BIN"
echo "$BIN"
