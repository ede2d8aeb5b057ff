#!/usr/bin/env bash
# Benchmark anchors that must not share the project's virtualenv: Infinity (infinity-emb on torch), installed
# from PyPI into its own venv under the cache, once, under a lock. Prints the infinity_emb path on success;
# on failure prints one `error:` line and exits 1 (make bench then reports Infinity as not measured).
set -euo pipefail

CACHE_DIR=${CACHE_DIR:-$HOME/.cache/rerank-operator}
VENVS="$CACHE_DIR/bench-venvs"
PYTHON=${PYTHON:-python3}
INFINITY_VERSION=0.0.78

mkdir -p "$VENVS"
exec 9>"$VENVS/.lock"
flock 9

venv="$VENVS/infinity"
stamp="$venv/.installed-$INFINITY_VERSION"
log="$VENVS/infinity-install.log"
if [[ ! -f "$stamp" ]]; then
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >"$log" 2>&1
  # The optimum extra gives `--engine optimum` (ONNX Runtime); fall back to torch alone if it cannot install.
  if ! "$venv/bin/pip" install -q "infinity-emb[server,torch,optimum]==$INFINITY_VERSION" >>"$log" 2>&1; then
    if ! "$venv/bin/pip" install -q "infinity-emb[server,torch]==$INFINITY_VERSION" >>"$log" 2>&1; then
      echo "error: infinity-emb $INFINITY_VERSION did not install (see $log)" >&2
      exit 1
    fi
  fi
  touch "$stamp"
fi
echo "$venv/bin/infinity_emb"
