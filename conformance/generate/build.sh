#!/usr/bin/env bash
# Regenerates the whole conformance corpus from scratch:
#   conformance/fixtures/, conformance/expected/, conformance/fixtures.json,
#   conformance/generate/dtypes.json, conformance/bad/.
# Creates one venv per pinned Orbax release under conformance/.venvs/<version>/
# (gitignored; reused when its requirements file is unchanged).
# Not run in CI: the generated files are committed.  Needs Python 3.11 and
# access to PyPI.  CPU only (8 virtual JAX devices via XLA_FLAGS).
#
# Usage: conformance/generate/build.sh [VERSION...]   (default: all req-*.txt)
# Env:   PYTHON=python3.11 (interpreter used to create the venvs)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
export XLA_FLAGS="--xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
export TF_CPP_MIN_LOG_LEVEL=3

# newest first: the newest version also probes dtypes and makes the raw OCDBT fixtures
ALL_VERSIONS=(0.12.8 0.11.40 0.5.10)
for f in "$HERE"/req-0.4.*.txt; do [ -e "$f" ] && ALL_VERSIONS+=("$(basename "$f" .txt | sed 's/^req-//')"); done
VERSIONS=("${@:-${ALL_VERSIONS[@]}}")
NEWEST="${ALL_VERSIONS[0]}"

venv() {  # venv VERSION -> prints the venv's python
  local v="$1" dir="$CONF/.venvs/$1" req="$HERE/req-$1.txt"
  local sum; sum="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.req.sha256" 2>/dev/null)" != "$sum" ]; then
    echo "== creating venv $dir" >&2
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip >&2
    "$dir/bin/pip" install -q -r "$req" >&2
    echo "$sum" > "$dir/.req.sha256"
  fi
  echo "$dir/bin/python"
}

# make sure every venv exists before deleting anything
declare -A PY
for v in "${VERSIONS[@]}" "$NEWEST"; do PY[$v]="$(venv "$v")"; done

if [ "$#" -eq 0 ]; then
  rm -rf "$CONF/fixtures" "$CONF/expected" "$CONF/fixtures.json" "$CONF/bad" "$HERE/dtypes.json"
fi
mkdir -p "$CONF/fixtures" "$CONF/expected"

cd "$HERE"
for v in "${VERSIONS[@]}"; do
  echo "== orbax-checkpoint $v"
  "${PY[$v]}" make_fixtures.py
  if [ "$v" = "$NEWEST" ]; then
    echo "== raw OCDBT databases (tensorstore of $v)"
    "${PY[$v]}" make_ocdbt.py
  fi
done
if [ -f make_multiprocess.py ] && [[ " ${VERSIONS[*]} " == *" $NEWEST "* ]]; then
  echo "== 2-process save ($NEWEST)"
  "${PY[$NEWEST]}" make_multiprocess.py || echo "!! 2-process fixture failed (skipped)"
fi
echo "== resharding fixtures ($NEWEST: 8-way save, Orbax's own 2x4-mesh restore as expected output)"
"${PY[$NEWEST]}" make_resharding.py
echo "== bad/ fixtures"
"${PY[$NEWEST]}" make_bad.py
rm -rf "$CONF/.tmp_dtypes" "$CONF/.tmp_probe"
"${PY[$NEWEST]}" make_table.py
find "$CONF/fixtures" "$CONF/bad" -type d -empty -delete  # git cannot hold them
echo "== independent re-read of the corpus (check_corpus.py)"
"${PY[$NEWEST]}" check_corpus.py
echo "== done: $(find "$CONF/fixtures" -type f | wc -l) fixture files, $(du -sh "$CONF/fixtures" | cut -f1)"
