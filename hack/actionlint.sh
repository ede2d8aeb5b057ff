#!/usr/bin/env bash
# Lints .github/workflows with actionlint, built once from its Go module (pinned) into the cache directory.
#   hack/actionlint.sh         -> builds actionlint when missing, then checks every workflow
#   hack/actionlint.sh bin     -> builds when missing, prints the binary's path
set -euo pipefail

ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${RERANK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rerank-operator}
BIN="$CACHE_DIR/bin/actionlint-$ACTIONLINT_VERSION/actionlint"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPATH=${GOPATH:-$CACHE_DIR/gopath}
export GOCACHE=${GOCACHE_OVERRIDE:-$CACHE_DIR/gocache}

die() { echo "actionlint: $*" >&2; exit 1; }

build() {
  [ -x "$BIN" ] && return 0
  command -v go >/dev/null 2>&1 || die "Go is not installed; install Go >= 1.24 to build actionlint"
  mkdir -p "$(dirname "$BIN")" "$CACHE_DIR/logs"
  exec 7>"$CACHE_DIR/actionlint.lock"
  flock 7
  [ -x "$BIN" ] && return 0
  echo "actionlint: building $ACTIONLINT_VERSION (first time only)" >&2
  GOBIN="$(dirname "$BIN")" go install -trimpath -ldflags "-s -w" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >"$CACHE_DIR/logs/actionlint.log" 2>&1 ||
    { tail -5 "$CACHE_DIR/logs/actionlint.log" >&2; die "building actionlint failed (log: $CACHE_DIR/logs/actionlint.log)"; }
}

case "${1:-check}" in
  bin) build; echo "$BIN" ;;
  check)
    build
    cd "$ROOT"
    # shellcheck and pyflakes are used for run: scripts when installed; neither is required.
    "$BIN" -no-color -oneline .github/workflows/*.yml
    ;;
  *) die "usage: $0 [check|bin]" ;;
esac
