#!/usr/bin/env bash
# Builds the pinned GitOps engine for tests (Flux's source-controller and kustomize-controller) from their Go
# modules into a cache outside the repository, copies their CRDs next to the binaries, and reuses them when present.
#   hack/gitops.sh build   -> builds what is missing, prints the bin directory last
#   hack/gitops.sh bindir  -> prints the bin directory
# The tests also need `git` (with git-http-backend) for the loopback Git server; it is installed with apt-get when
# missing.
set -euo pipefail

# v1.9.6 is the newest release whose go directive (1.26.0) the local toolchain accepts; v1.10.x needs go 1.27.
SOURCE_CONTROLLER_VERSION=${SOURCE_CONTROLLER_VERSION:-v1.9.6}
KUSTOMIZE_CONTROLLER_VERSION=${KUSTOMIZE_CONTROLLER_VERSION:-v1.9.6}
# Dependency versions the Go module proxy reachable from the test machines does not serve, each replaced by the
# nearest release of the same minor that it does serve ("module@wanted=module@used", space-separated).
SOURCE_CONTROLLER_SUBSTITUTES=${SOURCE_CONTROLLER_SUBSTITUTES:-github.com/fluxcd/pkg/artifact@v0.18.3=github.com/fluxcd/pkg/artifact@v0.18.0}
KUSTOMIZE_CONTROLLER_SUBSTITUTES=${KUSTOMIZE_CONTROLLER_SUBSTITUTES:-}
CACHE_DIR=${RERANK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rerank-operator}
BIN_DIR="$CACHE_DIR/bin/flux-sc-$SOURCE_CONTROLLER_VERSION-kc-$KUSTOMIZE_CONTROLLER_VERSION"
SRC_DIR="$CACHE_DIR/src"
LOG_DIR="$CACHE_DIR/logs"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPATH=${GOPATH:-$CACHE_DIR/gopath}
export GOCACHE=${GOCACHE_OVERRIDE:-$CACHE_DIR/gocache}

die() { echo "gitops: $*" >&2; exit 1; }

need_git() {
  [ -x "$(git --exec-path 2>/dev/null)/git-http-backend" ] && return 0
  echo "gitops: installing git (git-http-backend serves the test repository)" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq git >/dev/null ||
    die "cannot install git with apt-get"
}

# build_controller NAME VERSION SUBSTITUTES: the module zip leaves out the nested ./api module that go.mod replaces with a
# relative path, so copy the released sources, point that replace at the published api module of the same release
# and build the main package there; every other pin and replace of the release stays as upstream has it.
build_controller() {
  local name=$1 version=$2 substitutes=$3
  [ -x "$BIN_DIR/$name" ] && [ -d "$BIN_DIR/crds/$name" ] && return 0
  command -v go >/dev/null 2>&1 || die "Go is not installed; install Go >= 1.26 to build the GitOps engine"
  local module="github.com/fluxcd/$name"
  local dir
  dir=$(go mod download -json "$module@$version" 2>"$LOG_DIR/$name.log" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p') ||
    true
  [ -n "$dir" ] && [ -f "$dir/go.mod" ] || die "cannot fetch $module@$version from the Go module proxy"
  local src="$SRC_DIR/$name-$version"
  rm -rf "$src"
  mkdir -p "$src"
  cp -r "$dir/." "$src/"
  chmod -R u+w "$src"
  mkdir -p "$BIN_DIR/crds/$name"
  cp "$dir"/config/crd/bases/*.yaml "$BIN_DIR/crds/$name/"
  [ -x "$BIN_DIR/$name" ] && return 0
  echo "gitops: building $name $version (first time only; takes minutes)" >&2
  (
    cd "$src"
    go mod edit -dropreplace="$module/api" -require="$module/api@$version"
    for substitute in $substitutes; do go mod edit -replace="$substitute"; done
    go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/$name.tmp" . >>"$LOG_DIR/$name.log" 2>&1
  ) || { tail -20 "$LOG_DIR/$name.log" >&2; die "building $name failed (log: $LOG_DIR/$name.log)"; }
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
}

case "${1:-build}" in
  bindir) echo "$BIN_DIR" ;;
  build)
    need_git
    mkdir -p "$BIN_DIR" "$SRC_DIR" "$LOG_DIR"
    missing=0
    for b in source-controller kustomize-controller; do
      [ -x "$BIN_DIR/$b" ] && [ -d "$BIN_DIR/crds/$b" ] || missing=1
    done
    if [ "$missing" = 1 ]; then
      # Two test sessions (or make targets) may ask at once: one builds, the other waits and reuses.
      exec 9>"$CACHE_DIR/gitops-build.lock"
      if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
        echo "gitops: another build is running; waiting for it" >&2
        flock 9
      fi
      start=$(date +%s)
      build_controller source-controller "$SOURCE_CONTROLLER_VERSION" "$SOURCE_CONTROLLER_SUBSTITUTES"
      build_controller kustomize-controller "$KUSTOMIZE_CONTROLLER_VERSION" "$KUSTOMIZE_CONTROLLER_SUBSTITUTES"
      echo "gitops: built in $(( $(date +%s) - start ))s into $BIN_DIR" >&2
    fi
    echo "$BIN_DIR"
    ;;
  *) die "usage: $0 build|bindir" ;;
esac
