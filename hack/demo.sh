#!/usr/bin/env bash
# make demo: build the MiniLM cross-encoder test model, export it into a local model repository, serve it with
# rerank-serve, send the classic request with curl and with the official cohere SDK, then stop the server.
# Everything stays under demo-repository/ (git-ignored). Re-running reuses the model and the export.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
DEMO_DIR=${DEMO_DIR:-demo-repository}
NAME=${NAME:-cross-encoder/ms-marco-MiniLM-L-6-v2}
WEIGHT_FORMAT=${WEIGHT_FORMAT:-fp32}
SOURCE="$DEMO_DIR/source/minilm-cross-encoder"
REPOSITORY="$DEMO_DIR/repository"
PORT=${PORT:-$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
URL="http://127.0.0.1:$PORT"
ENCODED_NAME=${NAME//\//%2F}
SERVER_PID=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" || true
    fi
}
trap stop_server EXIT

mkdir -p "$DEMO_DIR"

step "1/6 Build the MiniLM cross-encoder test model (real all-MiniLM-L6-v2 encoder) in $SOURCE"
if [[ -f "$SOURCE/config.json" ]]; then
    echo "already built"
else
    "$BIN/python" -c 'import sys; from pathlib import Path
from rerank_runtime.exporter.testmodels import build_minilm_cross_encoder
print(build_minilm_cross_encoder(Path(sys.argv[1])))' "$SOURCE" >"$DEMO_DIR/build.log" 2>&1 \
        || { cat "$DEMO_DIR/build.log" >&2; exit 1; }
    echo "built (log: $DEMO_DIR/build.log)"
fi

step "2/6 Export it into the model repository $REPOSITORY as $NAME ($WEIGHT_FORMAT)"
"$BIN/rerank-repo" export --source "$SOURCE" --repository "$REPOSITORY" --name "$NAME" \
    --weight-format "$WEIGHT_FORMAT"
"$BIN/rerank-repo" list --repository "$REPOSITORY"

step "3/6 Start rerank-serve on $URL"
"$BIN/rerank-serve" --repository "$REPOSITORY" --host 127.0.0.1 --port "$PORT" --log-level warning \
    >"$DEMO_DIR/rerank-serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 240); do
    if curl -sf "$URL/v2/models/$ENCODED_NAME/ready" >/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "rerank-serve exited; its log:" >&2
        cat "$DEMO_DIR/rerank-serve.log" >&2
        exit 1
    fi
    sleep 0.5
done
curl -sf "$URL/v2/models/$ENCODED_NAME/ready" >/dev/null
echo "ready: $(curl -s "$URL/v2/models/$ENCODED_NAME")"

step "4/6 curl: POST $URL/v1/rerank"
BODY=$(printf '{"model": "%s", "query": "welcome", "documents": ["good morning", "farewell"]}' "$NAME")
echo "$BODY"
curl -sS -D "$DEMO_DIR/headers.txt" -H 'content-type: application/json' -d "$BODY" "$URL/v1/rerank" \
    | "$BIN/python" -m json.tool
grep -i '^x-model-version' "$DEMO_DIR/headers.txt"

step "5/6 cohere SDK: cohere.ClientV2(api_key=\"x\", base_url=\"$URL\").rerank(...)"
"$BIN/python" - "$URL" "$NAME" <<'PY'
import sys

import cohere

url, name = sys.argv[1], sys.argv[2]
documents = ["good morning", "farewell"]
client = cohere.ClientV2(api_key="x", base_url=url)
response = client.rerank(model=name, query="welcome", documents=documents)
for result in response.results:
    print(f"  index={result.index} relevance_score={result.relevance_score:.6f} document={documents[result.index]!r}")
v1 = cohere.Client(api_key="x", base_url=f"{url}/v3")
response = v1.rerank(model=name, query="welcome", documents=documents, top_n=1, return_documents=True)
best = response.results[0]
print(f"  v1 client via /v3, top_n=1: index={best.index} score={best.relevance_score:.6f} "
      f"document={best.document.text!r}")
PY

step "6/6 Stop the server (SIGTERM: readiness off, drain, exit)"
kill -TERM "$SERVER_PID"
set +e
wait "$SERVER_PID"
STATUS=$?
set -e
SERVER_PID=""
echo "rerank-serve exited with status $STATUS"
echo
echo "Standalone use: rerank-repo export --source <hf-repo|dir> --repository DIR --name NAME"
echo "                rerank-serve --repository DIR [--model NAME] [--port 8000] [--precision auto|f32|bf16]"
exit "$STATUS"
