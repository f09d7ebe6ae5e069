#!/usr/bin/env bash
# Ensures the pinned Python environment with real orbax-checkpoint 0.12.8
# (and its jax / tensorstore) exists under conformance/.venvs/0.12.8 and
# prints its python. Rebuilt whenever the requirements file changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/conformance/.venvs/0.12.8"
REQ="$ROOT/conformance/generate/req-0.12.8.txt"
SUM="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.req.sha256" 2>/dev/null)" != "$SUM" ]; then
  echo "== creating $VENV (orbax-checkpoint 0.12.8)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  echo "$SUM" > "$VENV/.req.sha256"
fi
echo "$VENV/bin/python"
