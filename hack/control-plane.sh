#!/usr/bin/env bash
# Builds the pinned control-plane binaries for tests (etcd, kube-apiserver, kube-controller-manager, kubectl,
# helm) from their Go modules into a cache outside the repository, and reuses them when present.
#   hack/control-plane.sh build   -> builds what is missing, prints the bin directory last
#   hack/control-plane.sh bindir  -> prints the bin directory
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
CACHE_DIR=${RERANK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rerank-operator}
BIN_DIR="$CACHE_DIR/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
SRC_DIR="$CACHE_DIR/src"
LOG_DIR="$CACHE_DIR/logs"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPATH=${GOPATH:-$CACHE_DIR/gopath}
export GOCACHE=${GOCACHE_OVERRIDE:-$CACHE_DIR/gocache}

die() { echo "control-plane: $*" >&2; exit 1; }

need_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed; install Go >= 1.24 to build the test control plane"
  if ! go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1; then
    die "cannot fetch k8s.io/kubernetes@$K8S_VERSION from the Go module proxy (${GOPROXY:-$(go env GOPROXY)})"
  fi
}

build_kubernetes() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local patch=${K8S_VERSION##*.}
  local staging_version="v0.$minor.$patch"
  local mod="$SRC_DIR/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
  local godirective
  godirective=$(awk '$1=="go"{print $2; exit}' "$gomod")
  (
    cd "$mod"
    rm -f go.mod go.sum
    printf 'module rerank.local/kubernetes-build\n\ngo %s\n' "$godirective" > go.mod
    # Mirror the release's godebug block: the binaries must behave as upstream's.
    awk '/^godebug /{print} /^godebug \(/{p=1} p{print} p&&/^\)/{p=0}' "$gomod" >> go.mod
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    # Every staging module that k8s.io/kubernetes replaces with ./staging/... is published as v0.<minor>.<patch>.
    grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' |
      while read -r m; do go mod edit -replace="$m@v0.0.0=$m@$staging_version"; done
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    for cmd in kube-apiserver kube-controller-manager kubectl; do
      [ -x "$BIN_DIR/$cmd" ] && continue
      echo "control-plane: building $cmd $K8S_VERSION (first time only; takes minutes)" >&2
      go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" \
        >"$LOG_DIR/$cmd.log" 2>&1 || { tail -20 "$LOG_DIR/$cmd.log" >&2; die "building $cmd failed (log: $LOG_DIR/$cmd.log)"; }
      mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
    done
  )
}

build_etcd() {
  [ -x "$BIN_DIR/etcd" ] && return 0
  echo "control-plane: building etcd $ETCD_VERSION (first time only)" >&2
  local mod="$SRC_DIR/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  (
    cd "$mod"
    rm -f go.mod go.sum
    printf 'module rerank.local/etcd-build\n\ngo 1.24\n' > go.mod
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >"$LOG_DIR/etcd.log" 2>&1 &&
      go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3 >>"$LOG_DIR/etcd.log" 2>&1 ||
      { tail -20 "$LOG_DIR/etcd.log" >&2; die "building etcd failed (log: $LOG_DIR/etcd.log)"; }
    mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
  )
}

build_helm() {
  [ -x "$BIN_DIR/helm" ] && return 0
  echo "control-plane: building helm $HELM_VERSION (first time only)" >&2
  GOBIN="$BIN_DIR" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    >"$LOG_DIR/helm.log" 2>&1 || { tail -20 "$LOG_DIR/helm.log" >&2; die "building helm failed (log: $LOG_DIR/helm.log)"; }
}

case "${1:-build}" in
  bindir) echo "$BIN_DIR" ;;
  build)
    mkdir -p "$BIN_DIR" "$SRC_DIR" "$LOG_DIR"
    missing=0
    for b in etcd kube-apiserver kube-controller-manager kubectl helm; do [ -x "$BIN_DIR/$b" ] || missing=1; done
    if [ "$missing" = 1 ]; then
      # Two test sessions (or make targets) may ask at once: one builds, the other waits and reuses.
      exec 9>"$CACHE_DIR/build.lock"
      if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
        echo "control-plane: another build is running; waiting for it" >&2
        flock 9
      fi
      start=$(date +%s)
      need_go
      build_etcd
      build_kubernetes
      build_helm
      echo "control-plane: built in $(( $(date +%s) - start ))s into $BIN_DIR" >&2
    fi
    echo "$BIN_DIR"
    ;;
  *) die "usage: $0 build|bindir" ;;
esac
