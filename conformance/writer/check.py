"""Checks what our writer produced against real Orbax 0.12.8.

For every case in OUT/cases.json:
  * Orbax reads us: `load_pytree` and `pytree_metadata` of OUT/ours/<case>
    equal those of Orbax's own OUT/orbax/<case> (same structure, leaf types,
    dtypes, shapes, bit-identical values);
  * same bytes: `_METADATA`, `_strings.json`, `_sharding`, `array_metadatas/*`
    and every `zarr.json` / `.zarray` are byte-identical; `_CHECKPOINT_METADATA`
    is byte-identical except for its two timestamps; JSON items' data.json are
    byte-identical; the key -> value maps of the
    array stores are identical once chunk payloads are decompressed;
  * we read us: `orbax inspect --json` prints the same document for both.

Usage: python check.py OUT ORBAX_BINARY
Prints one line per case and a closing "N passed, M failed".
"""
import json
import os
import re
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint.experimental.v1 as ocp  # noqa: E402
import tensorstore as ts  # noqa: E402
import zstandard  # noqa: E402

import cases as cases_lib  # noqa: E402

SAME_BYTES = ("_METADATA", "_strings.json", "_sharding", "array_metadatas/process_0")


def leaf_signature(x):
  if isinstance(x, np.ndarray) or hasattr(x, "dtype") and hasattr(x, "shape"):
    a = np.asarray(x)
    return ("array", str(a.dtype), a.shape, np.ascontiguousarray(a).view(np.uint8).tobytes())
  if isinstance(x, float) and np.isnan(x):
    return ("float", "nan")
  return (type(x).__name__, x)


def tree_signature(tree):
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return str(treedef), [(jax.tree_util.keystr(p), leaf_signature(v)) for p, v in flat]


def meta_signature(meta):
  flat, treedef = jax.tree_util.tree_flatten_with_path(meta, is_leaf=lambda x: x is None)
  return str(treedef), [(jax.tree_util.keystr(p), type(v).__name__, getattr(v, "shape", None),
                         str(getattr(v, "dtype", None))) for p, v in flat]


def kv_map(item_dir):
  """key -> bytes of an item's array store (OCDBT database or plain files)."""
  out = {}
  if os.path.exists(os.path.join(item_dir, "manifest.ocdbt")):
    kv = ts.KvStore.open({"driver": "ocdbt", "base": "file://" + os.path.abspath(item_dir)}).result()
    for key in kv.list().result():
      out[key.decode()] = kv.read(key).result().value
  else:
    for root, _, files in os.walk(item_dir):
      for f in files:
        rel = os.path.relpath(os.path.join(root, f), item_dir)
        if rel.startswith(("_", "array_metadatas")) or rel == "commit_success.txt":
          continue
        with open(os.path.join(root, f), "rb") as fh:
          out[rel] = fh.read()
  return out


def payload(key, value, meta):
  """The decoded bytes of a chunk value, given its array's metadata."""
  if meta.get("zarr_format") == 3:
    n = 1
    index_len = 16 * n + 4
    body = value[:-index_len]
    inner = meta["codecs"][0]["configuration"]["codecs"]
    if any(c["name"] == "zstd" for c in inner):
      return zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30)
    return body
  if meta.get("compressor"):
    return zstandard.ZstdDecompressor().decompress(value, max_output_size=1 << 30)
  return value


def compare_stores(ours_item, theirs_item, problems):
  ours, theirs = kv_map(ours_item), kv_map(theirs_item)
  if sorted(ours) != sorted(theirs):
    problems.append(f"array store keys differ: only ours {sorted(set(ours) - set(theirs))[:5]}, "
                    f"only Orbax {sorted(set(theirs) - set(ours))[:5]}")
    return
  metas = {}
  for key, value in theirs.items():
    if key.endswith(("zarr.json", ".zarray")):
      if ours[key] != value:
        problems.append(f"{key}: bytes differ:\n    ours  {ours[key][:300]!r}\n    Orbax {value[:300]!r}")
      metas[key.rsplit("/", 1)[0] if "/" in key else ""] = json.loads(value)
  for key, value in theirs.items():
    if key.endswith(("zarr.json", ".zarray")):
      continue
    array = ""
    for name in metas:
      if (name == "" or key.startswith(name + "/")) and len(name) >= len(array):
        array = name
    meta = metas.get(array, {})
    if payload(key, ours[key], meta) != payload(key, value, meta):
      problems.append(f"{key}: decompressed chunk differs")


def json_context():
  registry = ocp.handlers.local_registry()
  for name in cases_lib.JSON_ITEMS:
    registry.add(ocp.handlers.JsonHandler, checkpointable_name=name)
  return ocp.Context(checkpointables_options=ocp.options.CheckpointablesOptions(registry=registry))


def without_timestamps(path):
  text = open(os.path.join(path, "_CHECKPOINT_METADATA"), "rb").read()
  return re.sub(rb'("(?:init|commit)_timestamp_nsecs": )\d+', rb"\g<1>0", text)


def check_case(out, name, items, binary):
  ours = os.path.join(out, "ours", name)
  theirs = os.path.join(out, "orbax", name)
  problems = []
  try:
    if items == ["state"]:
      if tree_signature(ocp.load_pytree(ours)) != tree_signature(ocp.load_pytree(theirs)):
        problems.append("load_pytree differs from Orbax's own checkpoint")
      if meta_signature(ocp.pytree_metadata(ours).metadata) != meta_signature(ocp.pytree_metadata(theirs).metadata):
        problems.append("pytree_metadata differs")
    else:
      with json_context():
        a, b = ocp.load_checkpointables(ours), ocp.load_checkpointables(theirs)
      for item in items:
        if item in cases_lib.JSON_ITEMS:
          if a[item] != b[item]:
            problems.append(f"JSON item {item} loads as {a[item]!r}, Orbax's as {b[item]!r}")
        elif tree_signature(a[item]) != tree_signature(b[item]):
          problems.append(f"load_checkpointables()[{item!r}] differs")
  except Exception as e:  # noqa: BLE001 - report every failure as a problem
    problems.append(f"Orbax failed to load ours: {type(e).__name__}: {e}")
  for item in items:
    for f in SAME_BYTES + ("data.json",):
      a, b = os.path.join(ours, item, f), os.path.join(theirs, item, f)
      if os.path.exists(a) != os.path.exists(b):
        problems.append(f"{item}/{f}: present in {'ours' if os.path.exists(a) else 'Orbax'} only")
      elif os.path.exists(a) and open(a, "rb").read() != open(b, "rb").read():
        problems.append(f"{item}/{f}: bytes differ:\n    ours  {open(a, 'rb').read()[:400]!r}\n"
                        f"    Orbax {open(b, 'rb').read()[:400]!r}")
    if item not in cases_lib.JSON_ITEMS:
      compare_stores(os.path.join(ours, item), os.path.join(theirs, item), problems)
  if without_timestamps(ours) != without_timestamps(theirs):
    problems.append(f"_CHECKPOINT_METADATA differs beyond timestamps: {without_timestamps(ours)!r} vs "
                    f"{without_timestamps(theirs)!r}")
  docs = [subprocess.run([binary, "inspect", p, "--json"], capture_output=True, text=True) for p in (ours, theirs)]
  if any(d.returncode for d in docs):
    problems.append("orbax inspect failed: " + " | ".join(d.stderr.strip() for d in docs))
  elif json.loads(docs[0].stdout) != json.loads(docs[1].stdout):
    problems.append("orbax inspect --json differs between ours and Orbax's")
  return problems


def main(out, binary):
  cases = json.load(open(os.path.join(out, "cases.json")))
  failed = 0
  for case in cases:
    problems = check_case(out, case["name"], case["items"], binary)
    print(f"{'ok  ' if not problems else 'FAIL'} {case['name']}")
    for p in problems:
      print("     " + p)
    failed += bool(problems)
  print(f"writer-conformance: {len(cases) - failed} passed, {failed} failed")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], sys.argv[2]))
