#!/usr/bin/env bash
# Same-machine, same-run comparison with Orbax 0.12.8 (see BENCHMARKS.md):
# a 1 GiB transformer-like tree (24 layers of float32 and bfloat16 matrices)
# and a tree of 5000 small leaves, saved and loaded by both, each measurement
# in a fresh process with a warm page cache. Prints JSON lines and a summary
# with ratios; results also go to bench/out/results.jsonl.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="$("$ROOT/conformance/venv.sh")"
VENV="$(dirname "$(dirname "$PYTHON")")"
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
OUT="$ROOT/bench/out"
REPEAT="${REPEAT:-3}"
mkdir -p "$OUT"
(cd "$ROOT" && cargo build --release --quiet --example bench)
OURS="$ROOT/target/release/examples/bench"
PY="$VENV/bin/python $ROOT/bench/orbax_bench.py"
[ -d "$OUT/orbax_transformer" ] || $PY make "$OUT" 2>&1 | grep -v -e WARNING -e "^W0000"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
warm() { find "$1" -type f -exec cat {} + > /dev/null; }
run() { # label, command...
  local label=$1; shift
  for _ in $(seq "$REPEAT"); do
    "$@" 2>/dev/null | tail -n 1 | sed "s/^{/{\"impl\": \"$label\", /" | tee -a "$RESULTS"
  done
}
for tree in ${TREES:-transformer small5000}; do
  rm -rf "$OUT/ours_$tree" "$OUT/orbax_resave_$tree"
  warm "$OUT/orbax_$tree"
  run "orbax:$tree" $PY load "$OUT/orbax_$tree"
  run "ours:$tree" "$OURS" load "$OUT/orbax_$tree"
  run "orbax:$tree" $PY save "$OUT/orbax_$tree" "$OUT/orbax_resave_$tree"
  run "ours:$tree" "$OURS" save "$OUT/orbax_$tree" "$OUT/ours_$tree"
  warm "$OUT/ours_$tree"
  run "ours-reads-ours:$tree" "$OURS" load "$OUT/ours_$tree"
  run "orbax:$tree" $PY metadata "$OUT/orbax_$tree"
  run "ours:$tree" "$OURS" metadata "$OUT/orbax_$tree"
done
"$VENV/bin/python" "$ROOT/bench/summarize.py" "$RESULTS"
