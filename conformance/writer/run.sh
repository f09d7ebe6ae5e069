#!/usr/bin/env bash
# Writer conformance against real Orbax 0.12.8: Orbax saves a matrix of
# trees, `orbax convert` rewrites each with the case's options, and check.py
# has Orbax load ours and compares values, metadata and bytes.
# Uses the pinned venv of conformance/venv.sh (created on first use).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="$("$ROOT/conformance/venv.sh")"
VENV="$(dirname "$(dirname "$PYTHON")")"
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
OUT="${WRITER_CONFORMANCE_OUT:-$ROOT/target/writer-conformance}"
rm -rf "$OUT"
mkdir -p "$OUT"
(cd "$ROOT" && cargo build --quiet --bin orbax)
BIN="$ROOT/target/debug/orbax"
(cd "$HERE" && "$VENV/bin/python" make_inputs.py "$OUT" 2>&1 | grep -v -e "WARNING:absl" -e "^W0000" || true)
"$VENV/bin/python" - "$OUT" "$BIN" <<'PY'
import json, subprocess, sys
out, binary = sys.argv[1], sys.argv[2]
for case in json.load(open(f"{out}/cases.json")):
  o = case["options"]
  args = [binary, "convert", f"{out}/input/{case['name']}", f"{out}/ours/{case['name']}"]
  args += ["--no-ocdbt"] * (not o["use_ocdbt"]) + ["--zarr2"] * (not o["use_zarr3"])
  args += ["--no-compression"] * (not o["use_compression"])
  if o["chunk_byte_size"]:
    args += ["--chunk-byte-size", str(o["chunk_byte_size"])]
  if o["storage_dtype"]:
    args += ["--dtype", o["storage_dtype"]]
  r = subprocess.run(args, capture_output=True, text=True)
  if r.returncode:
    print(f"orbax convert failed for {case['name']}: {r.stderr}")
PY
cd "$HERE" && "$VENV/bin/python" check.py "$OUT" "$BIN" 2>&1 | grep -v -e "WARNING:absl" -e "^W0000"
exit "${PIPESTATUS[0]}"
