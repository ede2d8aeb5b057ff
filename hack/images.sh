#!/usr/bin/env bash
# Builds the project's container images (rerank-runtime, rerank-export, rerank-operator) from Dockerfile.runtime and
# Dockerfile.operator with buildah, into a private image store under the cache directory (the host's
# /etc/containers and /var/lib/containers are never touched). Each image is keyed by the content hash of its inputs
# (Dockerfile, pyproject.toml, constraints, sources, build arguments, base image): a warm call only re-tags.
#
#   hack/images.sh build       -> builds what is missing, prints one image reference per line (runtime, export, operator)
#   hack/images.sh refs        -> prints the image references without building
#   hack/images.sh save DIR    -> builds, then writes DIR/<name>.tar docker archives (`ctr -n k8s.io images import`)
#   hack/images.sh podman ...  -> podman with the project's image store and settings (tests, people)
#   hack/images.sh deps        -> installs podman, buildah, runc, debootstrap from Debian packages when missing
#   hack/images.sh env         -> prints the CONTAINERS_* variables that select the private store (eval-able)
#   hack/images.sh prune       -> removes images no tag refers to and leftovers of interrupted builds
#
# Settings (environment):
#   IMAGE_PREFIX      registry/owner of the references (default ghcr.io/rerank-operator, where release.yml publishes)
#   IMAGE_TAG         tag (default: the chart's appVersion)
#   BASE_IMAGE        base of every image (default python:3.11-slim when present or pullable, else a stand-in made
#                     from Debian's mirror with debootstrap: Debian bookworm's python3, 3.11)
#   TORCH_INDEX_URL   index torch is installed from in rerank-export (default: the CPU-only PyTorch index when it
#                     answers, else PyPI)
#   IMAGES            which images to build (default "runtime export operator")
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${RERANK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rerank-operator}
STORE="$CACHE_DIR/images"
CONF_DIR="$STORE/conf"
LOG_DIR="$STORE/logs"
IMAGE_PREFIX=${IMAGE_PREFIX:-ghcr.io/rerank-operator}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/rerank-operator/Chart.yaml")}
IMAGES=${IMAGES:-runtime export operator}
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
UPSTREAM_BASE=docker.io/library/python:3.11-slim
PYTORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
PYPI_INDEX=https://pypi.org/simple

die() { echo "images: $*" >&2; exit 1; }
say() { echo "images: $*" >&2; }

deps() {
  local missing=()
  for cmd in podman buildah runc debootstrap; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them (install podman, buildah, runc, debootstrap)"
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root or install podman buildah runc debootstrap yourself"
  say "installing podman buildah runc debootstrap from Debian packages (first time only)"
  mkdir -p "$LOG_DIR"
  {
    apt-get -o DPkg::Lock::Timeout=600 update &&
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
        podman buildah runc debootstrap uidmap
  } >"$LOG_DIR/apt.log" 2>&1 || { tail -5 "$LOG_DIR/apt.log" >&2; die "apt-get install failed (log: $LOG_DIR/apt.log)"; }
}

# Private configuration: runc (crun fails on hybrid cgroups here), ulimits within the host's hard limits, overlay
# storage under the cache. Selected by environment variables, so the host's global files stay as they are.
configure() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$STORE/storage" "$STORE/run" "$STORE/tmp" "$STORE/build-tmp"
  local nofile; nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  local nproc; nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$CONF_DIR/containers.conf.tmp" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$STORE/tmp"
EOF
  cat >"$CONF_DIR/storage.conf.tmp" <<EOF
[storage]
driver = "overlay"
graphroot = "$STORE/storage"
runroot = "$STORE/run"
EOF
  cat >"$CONF_DIR/registries.conf.tmp" <<EOF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
  for f in containers.conf storage.conf registries.conf; do
    cmp -s "$CONF_DIR/$f.tmp" "$CONF_DIR/$f" && rm "$CONF_DIR/$f.tmp" || mv "$CONF_DIR/$f.tmp" "$CONF_DIR/$f"
  done
  export CONTAINERS_CONF="$CONF_DIR/containers.conf"
  export CONTAINERS_STORAGE_CONF="$CONF_DIR/storage.conf"
  export CONTAINERS_REGISTRIES_CONF="$CONF_DIR/registries.conf"
  export TMPDIR="$STORE/build-tmp"
  # pip inside RUN steps must trust what the host trusts (an intercepting proxy's CA, for example); the bundle is
  # mounted for RUN steps only and named by a pip.conf that is mounted the same way: nothing of it stays in an image.
  BUILD_MOUNTS=()
  local bundle=/etc/ssl/certs/ca-certificates.crt
  if [ -f "$bundle" ]; then
    printf '[global]\ncert = /etc/ssl/certs/rerank-build-host-ca.crt\n' >"$CONF_DIR/pip.conf"
    BUILD_MOUNTS=(-v "$bundle:/etc/ssl/certs/rerank-build-host-ca.crt:ro" -v "$CONF_DIR/pip.conf:/etc/pip.conf:ro")
  fi
}

image_exists() { podman image exists "$1" 2>/dev/null; }

# A python:3.11-slim stand-in from Debian's mirror: minbase + python3 (3.11 in bookworm), no apt lists, docs or caches.
standin_base() {
  local key; key=$( { declare -f standin_base; echo "$DEBIAN_SUITE $DEBIAN_MIRROR"; } | sha256sum | cut -c1-12)
  local ref="localhost/rerank-python:3.11-$DEBIAN_SUITE-$key"
  if image_exists "$ref"; then echo "$ref"; return 0; fi
  say "making a python:3.11-slim stand-in from Debian $DEBIAN_SUITE with debootstrap (first time only, ~2 min)"
  local rootfs="$STORE/tmp/rootfs-$key"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$LOG_DIR/debootstrap.log" 2>&1 ||
    { tail -5 "$LOG_DIR/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed (log: $LOG_DIR/debootstrap.log)"; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -c . | podman import -q \
    --change 'ENV LANG=C.UTF-8' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$ref" >/dev/null || { rm -rf "$rootfs"; die "podman import of the stand-in base failed"; }
  rm -rf "$rootfs"
  echo "$ref"
}

# BASE_IMAGE if set; else python:3.11-slim if present or pullable; else the Debian stand-in.
resolve_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then
    image_exists "$BASE_IMAGE" || podman pull -q "$BASE_IMAGE" >/dev/null 2>&1 || die "cannot pull BASE_IMAGE=$BASE_IMAGE"
    echo "$BASE_IMAGE"; return 0
  fi
  if image_exists "$UPSTREAM_BASE"; then echo "$UPSTREAM_BASE"; return 0; fi
  local marker="$STORE/no-registry"
  # One pull attempt per day at most: warm builds must not wait on an unreachable registry.
  if [ -z "$(find "$marker" -mmin -1440 2>/dev/null)" ]; then
    if timeout 60 podman pull -q "$UPSTREAM_BASE" >/dev/null 2>&1; then rm -f "$marker"; echo "$UPSTREAM_BASE"; return 0; fi
    touch "$marker"
    say "$UPSTREAM_BASE cannot be pulled; using a stand-in built from Debian's mirror"
  fi
  standin_base
}

resolve_torch_index() {
  if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "$TORCH_INDEX_URL"; return 0; fi
  if curl -fsS -m 15 -o /dev/null "$PYTORCH_CPU_INDEX/torch/" 2>/dev/null; then echo "$PYTORCH_CPU_INDEX"; else echo "$PYPI_INDEX"; fi
}

# name -> Dockerfile and build arguments
image_dockerfile() { case "$1" in operator) echo Dockerfile.operator ;; *) echo Dockerfile.runtime ;; esac; }
image_ref() { echo "$IMAGE_PREFIX/rerank-$1:$IMAGE_TAG"; }

inputs_hash() {
  local name=$1; shift
  (
    cd "$ROOT"
    printf '%s\n' "$name" "$@"
    declare -f build_one
    # The files the Dockerfiles copy, as they are in the work tree (uncommitted edits included).
    find "$(image_dockerfile "$name")" pyproject.toml constraints.txt .dockerignore operator runtime -type f \
      -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null | LC_ALL=C sort | xargs sha256sum
  ) | sha256sum | cut -c1-16
}

build_one() {
  local name=$1 base=$2 torch_index=$3
  local ref; ref=$(image_ref "$name")
  local base_id; base_id=$(podman image inspect --format '{{.Id}}' "$base")
  local args=(--build-arg "BASE_IMAGE=$base")
  case "$name" in
    export) args+=(--build-arg EXTRAS=runtime,export --build-arg IMAGE_TITLE=rerank-export
                   --build-arg "TORCH_INDEX_URL=$torch_index") ;;
  esac
  local key; key=$(inputs_hash "$name" "$base_id" "${args[@]}")
  local cached="localhost/rerank-$name:in-$key"
  if ! image_exists "$cached"; then
    local revision; revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$ROOT" status --porcelain -- operator runtime pyproject.toml constraints.txt Dockerfile.* 2>/dev/null)" ] &&
      revision="$revision-dirty"
    say "building rerank-$name (inputs $key) from $(image_dockerfile "$name") on $base"
    local start; start=$(date +%s)
    ( cd "$ROOT" && buildah bud --isolation chroot --network host --layers --force-rm --pull-never --format oci \
        "${BUILD_MOUNTS[@]}" "${args[@]}" \
        --build-arg "VERSION=$IMAGE_TAG" --build-arg "REVISION=$revision" \
        -f "$(image_dockerfile "$name")" -t "$cached" . ) >"$LOG_DIR/build-$name.log" 2>&1 ||
      { tail -15 "$LOG_DIR/build-$name.log" >&2; die "building rerank-$name failed (log: $LOG_DIR/build-$name.log)"; }
    say "built rerank-$name in $(( $(date +%s) - start ))s"
  fi
  podman tag "$cached" "$ref"
  untag_stale "$name" "$cached"
  echo "$ref"
}

# Earlier inputs' images of one name lose their tag (layers that current images share stay).
untag_stale() {
  podman images --format '{{.Repository}}:{{.Tag}}' "localhost/rerank-$1" 2>/dev/null |
    grep ':in-' | grep -v -x -F "$2" | xargs -r podman rmi -f >/dev/null 2>&1 || true
}

# Leftovers of interrupted builds (working containers, temporary files) and images no tag refers to any more.
# Dangling images include buildah's layer cache: the next change then rebuilds the dependency layers.
prune() {
  buildah rm --all >/dev/null 2>&1 || true
  rm -rf "${STORE:?}/build-tmp/"*
  podman image prune -f >/dev/null 2>&1 || true
}

build() {
  deps
  configure
  mkdir -p "$STORE"
  exec 8>"$STORE/build.lock"
  if ! flock -n 8; then say "another image build is running; waiting for it"; flock 8; fi
  rm -rf "${STORE:?}/build-tmp/"*  # this lock's holder is the only builder
  # The export image needs ~15 GB while it builds; below 20 GB free, drop what no image uses first.
  if [ "$(df -Pk "$STORE" | awk 'NR==2{print $4}')" -lt $((20 * 1024 * 1024)) ]; then
    say "less than 20 GB free under $STORE; removing unused images and build leftovers"
    prune
  fi
  local base; base=$(resolve_base)
  local torch_index=""
  case " $IMAGES " in *" export "*) torch_index=$(resolve_torch_index) ;; esac
  for name in $IMAGES; do build_one "$name" "$base" "$torch_index"; done
}

save() {
  local dir=${1:?usage: images.sh save DIR}
  mkdir -p "$dir" "$STORE/archives"
  local refs; refs=$(build)
  for ref in $refs; do
    local name=${ref##*/}; name=${name%%:*}
    local id; id=$(podman image inspect --format '{{.Id}}' "$ref" | cut -c1-16)
    local archive="$STORE/archives/$name-$IMAGE_TAG-$id.tar"
    if [ ! -f "$archive" ]; then
      rm -f "$STORE/archives/$name-$IMAGE_TAG-"*.tar
      podman save -q --format docker-archive -o "$archive.tmp" "$ref" || die "podman save $ref failed"
      mv "$archive.tmp" "$archive"
    fi
    ln -f "$archive" "$dir/$name.tar" 2>/dev/null || cp "$archive" "$dir/$name.tar"
    echo "$dir/$name.tar"
  done
}

case "${1:-build}" in
  deps) deps ;;
  env) configure; printf 'export CONTAINERS_CONF=%q CONTAINERS_STORAGE_CONF=%q CONTAINERS_REGISTRIES_CONF=%q\n' \
         "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF" "$CONTAINERS_REGISTRIES_CONF" ;;
  refs) for name in $IMAGES; do image_ref "$name"; done ;;
  build) build ;;
  save) shift; save "$@" ;;
  podman) shift; deps; configure; exec podman "$@" ;;
  prune) deps; configure; exec 8>"$STORE/build.lock"; flock 8; prune ;;
  *) die "usage: $0 build|refs|save DIR|podman ARGS|prune|deps|env" ;;
esac
