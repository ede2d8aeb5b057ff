#!/usr/bin/env bash
# Builds and installs what a real test node needs, cached outside the repository:
#   - kubelet, kube-proxy, kube-scheduler (the control plane's pinned Kubernetes, same wrapper-module build)
#   - containerd v2, its runc shim and ctr; CoreDNS for cluster DNS
#   - a pause image (a tiny static binary in an otherwise empty image), as an OCI archive for `ctr images import`
#   - runc, CNI plugins, iptables, conntrack from Debian packages (apt-get, only when missing)
#   hack/node.sh build   -> builds what is missing, prints the bin directory last
#   hack/node.sh deps    -> installs the Debian packages only
#   hack/node.sh bindir  -> prints the bin directory
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
CACHE_DIR=${RERANK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rerank-operator}
BIN_DIR="$CACHE_DIR/bin/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-coredns-$COREDNS_VERSION"
SRC_DIR="$CACHE_DIR/src"
LOG_DIR="$CACHE_DIR/logs"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEBIAN_PACKAGES=(runc containernetworking-plugins iptables conntrack)

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPATH=${GOPATH:-$CACHE_DIR/gopath}
export GOCACHE=${GOCACHE_OVERRIDE:-$CACHE_DIR/gocache}

die() { echo "node: $*" >&2; exit 1; }

install_debian_packages() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing Debian packages (${missing[*]}) and no apt-get to install them"
  echo "node: installing ${missing[*]} from Debian" >&2
  # One apt at a time on a shared machine: the dpkg lock is waited for, not failed on.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >"$LOG_DIR/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 || { tail -20 "$LOG_DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

go_build() {  # go_build NAME PACKAGE [extra go build args...]
  local name=$1 pkg=$2; shift 2
  [ -x "$BIN_DIR/$name" ] && return 0
  echo "node: building $name (first time only; takes minutes)" >&2
  go build -trimpath "$@" -o "$BIN_DIR/$name.tmp" "$pkg" >"$LOG_DIR/$name.log" 2>&1 ||
    { tail -20 "$LOG_DIR/$name.log" >&2; die "building $name failed (log: $LOG_DIR/$name.log)"; }
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
}

build_kubernetes() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local patch=${K8S_VERSION##*.}
  local staging_version="v0.$minor.$patch"
  # Its own wrapper module: hack/control-plane.sh may be rewriting its module at the same time.
  local mod="$SRC_DIR/kubernetes-node-$K8S_VERSION"
  mkdir -p "$mod"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$K8S_VERSION"
  local godirective
  godirective=$(awk '$1=="go"{print $2; exit}' "$gomod")
  (
    cd "$mod"
    if [ ! -f go.mod ]; then
      printf 'module rerank.local/kubernetes-node-build\n\ngo %s\n' "$godirective" > go.mod
      awk '/^godebug /{print} /^godebug \(/{p=1} p{print} p&&/^\)/{p=0}' "$gomod" >> go.mod
      go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
      grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' |
        while read -r m; do go mod edit -replace="$m@v0.0.0=$m@$staging_version"; done
    fi
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    for cmd in kube-scheduler kube-proxy kubelet; do
      go_build "$cmd" "k8s.io/kubernetes/cmd/$cmd" -ldflags "$ldflags"
    done
  )
}

build_containerd() {
  local mod="$SRC_DIR/containerd-$CONTAINERD_VERSION"
  mkdir -p "$mod"
  (
    cd "$mod"
    if [ ! -f go.sum ]; then
      printf 'module rerank.local/containerd-build\n\ngo 1.24\n' > go.mod
      go get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" >"$LOG_DIR/containerd-get.log" 2>&1 ||
        { tail -20 "$LOG_DIR/containerd-get.log" >&2; die "fetching containerd $CONTAINERD_VERSION failed"; }
    fi
    local ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
    for cmd in containerd containerd-shim-runc-v2 ctr; do
      go_build "$cmd" "github.com/containerd/containerd/v2/cmd/$cmd" \
        -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags"
    done
  )
}

build_coredns() {
  [ -x "$BIN_DIR/coredns" ] && return 0
  echo "node: building coredns $COREDNS_VERSION (first time only)" >&2
  # A main of our own that links only the plugins the Corefile uses (bind, errors, log, cache, kubernetes).
  local mod="$SRC_DIR/coredns-$COREDNS_VERSION"
  mkdir -p "$mod"
  cp "$HERE/coredns/main.go" "$mod/main.go"
  (
    cd "$mod"
    if [ ! -f go.sum ]; then
      printf 'module rerank.local/coredns-build\n\ngo 1.24\n' > go.mod
      go get "github.com/coredns/coredns@$COREDNS_VERSION" >"$LOG_DIR/coredns.log" 2>&1 ||
        { tail -20 "$LOG_DIR/coredns.log" >&2; die "fetching coredns $COREDNS_VERSION failed"; }
    fi
    go_build coredns . -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
  )
}

build_pause() {
  # The sandbox image: sleeps, reaps children, exits on SIGTERM/SIGINT. No registry is needed to get it.
  local sum; sum=$(cat "$HERE/pause/main.go" "$HERE/oci_image.py" | sha256sum | cut -c1-16)
  [ -f "$BIN_DIR/pause.oci.tar" ] && [ "$(cat "$BIN_DIR/pause.src" 2>/dev/null)" = "$sum" ] && return 0
  local work="$SRC_DIR/pause"
  rm -rf "$work"; mkdir -p "$work"
  cp "$HERE/pause/main.go" "$work/main.go"
  printf 'module rerank.local/pause\n\ngo 1.24\n' > "$work/go.mod"
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$work/pause" .) >"$LOG_DIR/pause.log" 2>&1 ||
    { tail -20 "$LOG_DIR/pause.log" >&2; die "building pause failed"; }
  python3 "$HERE/oci_image.py" --binary "$work/pause" --name pause --ref "$PAUSE_IMAGE" \
    --out "$BIN_DIR/pause.oci.tar.tmp" --user 65535:65535
  mv "$BIN_DIR/pause.oci.tar.tmp" "$BIN_DIR/pause.oci.tar"
  echo "$sum" > "$BIN_DIR/pause.src"
}

build_probe() {
  # The node tier's own test image (HTTP server + in-pod resolve/fetch), so the node is proven without the
  # project's images.
  local sum; sum=$(cat "$HERE/node-probe/main.go" "$HERE/oci_image.py" | sha256sum | cut -c1-16)
  [ -f "$BIN_DIR/node-probe.oci.tar" ] && [ "$(cat "$BIN_DIR/node-probe.src" 2>/dev/null)" = "$sum" ] && return 0
  local work="$SRC_DIR/node-probe"
  rm -rf "$work"; mkdir -p "$work"
  cp "$HERE/node-probe/main.go" "$work/main.go"
  printf 'module rerank.local/node-probe\n\ngo 1.24\n' > "$work/go.mod"
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$work/node-probe" .) >"$LOG_DIR/node-probe.log" 2>&1 ||
    { tail -20 "$LOG_DIR/node-probe.log" >&2; die "building node-probe failed"; }
  python3 "$HERE/oci_image.py" --binary "$work/node-probe" --name node-probe --ref "$PROBE_IMAGE" \
    --out "$BIN_DIR/node-probe.oci.tar.tmp" --user 10001:10001
  mv "$BIN_DIR/node-probe.oci.tar.tmp" "$BIN_DIR/node-probe.oci.tar"
  echo "$sum" > "$BIN_DIR/node-probe.src"
}

PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/rerank/pause:3.10}
PROBE_IMAGE=${PROBE_IMAGE:-localhost/rerank/node-probe:1}

case "${1:-build}" in
  bindir) echo "$BIN_DIR" ;;
  pause-image) echo "$PAUSE_IMAGE" ;;
  probe-image) echo "$PROBE_IMAGE" ;;
  deps) mkdir -p "$LOG_DIR"; install_debian_packages ;;
  build)
    mkdir -p "$BIN_DIR" "$SRC_DIR" "$LOG_DIR"
    missing=0
    for b in kubelet kube-proxy kube-scheduler containerd containerd-shim-runc-v2 ctr coredns pause.oci.tar node-probe.oci.tar; do
      [ -e "$BIN_DIR/$b" ] || missing=1
    done
    # The two small images are rebuilt when their sources change.
    for src in pause node-probe; do
      sum=$(cat "$HERE/$src/main.go" "$HERE/oci_image.py" | sha256sum | cut -c1-16)
      [ "$(cat "$BIN_DIR/$src.src" 2>/dev/null)" = "$sum" ] || missing=1
    done
    install_debian_packages
    if [ "$missing" = 1 ]; then
      exec 9>"$CACHE_DIR/node-build.lock"
      if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
        echo "node: another build is running; waiting for it" >&2
        flock 9
      fi
      command -v go >/dev/null 2>&1 || die "Go is not installed; install Go >= 1.24 to build the test node"
      start=$(date +%s)
      build_pause
      build_probe
      build_containerd
      build_kubernetes
      build_coredns
      echo "node: built in $(( $(date +%s) - start ))s into $BIN_DIR" >&2
    fi
    echo "$BIN_DIR"
    ;;
  *) die "usage: $0 build|deps|bindir|pause-image|probe-image" ;;
esac
