#!/usr/bin/env python3
"""Independent reference reader: recomputes every expected output from the
bytes on disk (no Orbax, no TensorStore) and compares with expected/.

Uses only numpy, ml_dtypes, zstandard, msgpack and ocdbt_decode.py.  It shows
that the protocol outputs are derivable from the checkpoint files alone, and
that every bad/ case is rejected (it does not check the error class).

  python check_corpus.py [NAME_SUBSTRING]
"""

import base64  # noqa: F401
import hashlib
import io
import json
import math
import os
import re
import struct
import sys

import numpy as np
import zstandard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The independent OCDBT decoder lives in the workplace's shared reference
# material (../shared/reference beside the repository); it is not copied here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "shared", "reference"))
import fixlib  # noqa: E402
import ocdbt_decode as od  # noqa: E402

try:
  import ml_dtypes
except ImportError:
  ml_dtypes = None

EMPTY_KINDS = {"None": "none", "Dict": "empty_dict", "List": "empty_list", "Tuple": "empty_tuple",
               "NamedTuple": "empty_tuple"}


class ReadError(Exception):
  pass


def dtype_from_name(name):
  try:
    return np.dtype(name)
  except TypeError:
    return np.dtype(getattr(ml_dtypes, name))


# ---------------------------------------------------------------------------
class Store:
  """Key-value view of an item directory (OCDBT or plain files)."""

  def __init__(self, item_dir):
    self.dir = item_dir
    self.kv = None
    if os.path.exists(os.path.join(item_dir, "manifest.ocdbt")):
      db = od.Database(item_dir)
      m = db.manifest()
      self.kv = {}
      if m["versions"]:
        for k, e in db.iter_keys(m["versions"][-1]):
          self.kv[k.decode("utf-8")] = (e["inline_value"] if "inline_value" in e
                                        else db.read_ref(e["indirect"]))

  def get(self, key):
    if self.kv is not None:
      return self.kv.get(key)
    p = os.path.join(self.dir, key)
    if not os.path.isfile(p):
      return None
    with open(p, "rb") as f:
      return f.read()


def zstd_decompress(b):
  d = zstandard.ZstdDecompressor().decompressobj()
  out = d.decompress(b)
  return out


def read_array(store, param, allow_missing):
  prefix = (param + "/") if param else ""
  z3 = store.get(prefix + "zarr.json")
  if z3 is not None:
    return read_zarr3(store, prefix, json.loads(z3), allow_missing)
  z2 = store.get(prefix + ".zarray")
  if z2 is not None:
    return read_zarr2(store, prefix, json.loads(z2), allow_missing)
  raise ReadError("no zarr metadata for %r" % param)


def _grid(shape, chunk):
  counts = [-(-s // c) if c else 1 for s, c in zip(shape, chunk)]
  return list(np.ndindex(*counts)) if shape else [()]


def _place(out, chunk_arr, idx, chunk):
  sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunk, out.shape))
  sub = chunk_arr[tuple(slice(0, x.stop - x.start) for x in sl)]
  out[sl] = sub


def decode_bytes(raw, dt, shape):
  n = int(np.prod(shape)) if shape else 1
  a = np.frombuffer(raw, dtype=dt.newbyteorder("<") if dt.itemsize > 1 and dt.kind in "iufc" else dt,
                    count=n)
  return a.astype(dt, copy=False).reshape(shape)


def read_zarr3(store, prefix, meta, allow_missing):
  dt = dtype_from_name(meta["data_type"])
  shape = meta["shape"]
  chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
  codecs = meta["codecs"]
  fill = meta.get("fill_value", 0)
  out = np.zeros(shape, dtype=dt)
  if fill not in (0, 0.0, False, None, [0.0, 0.0]):
    raise ReadError("unsupported fill value %r" % fill)
  sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
  for idx in _grid(shape, chunk):
    key = prefix + ("c" + sep + sep.join(str(i) for i in idx) if idx else "c")
    val = store.get(key)
    if val is None:
      if allow_missing:
        continue
      raise ReadError("missing chunk %s" % key)
    if codecs[0]["name"] == "sharding_indexed":
      cfg = codecs[0]["configuration"]
      inner = cfg["chunk_shape"]
      per = [c // i for c, i in zip(chunk, inner)]
      n = int(np.prod(per)) if per else 1
      index = val[len(val) - 16 * n - 4:]
      if od.crc32c(index[:-4]) != struct.unpack("<I", index[-4:])[0]:
        raise ReadError("shard index crc mismatch %s" % key)
      chunk_arr = np.zeros(chunk, dtype=dt)
      for j, sub in enumerate(np.ndindex(*per) if per else [()]):
        off, nb = struct.unpack("<QQ", index[16 * j:16 * j + 16])
        if off == 2 ** 64 - 1:
          continue
        raw = val[off:off + nb]
        if any(c["name"] == "zstd" for c in cfg["codecs"]):
          raw = zstd_decompress(raw)
        _place(chunk_arr, decode_bytes(raw, dt, inner), sub, inner)
    else:
      raw = val
      if any(c["name"] == "zstd" for c in codecs):
        raw = zstd_decompress(raw)
      chunk_arr = decode_bytes(raw, dt, chunk)
    _place(out, chunk_arr, idx, chunk)
  return out


def read_zarr2(store, prefix, meta, allow_missing):
  dt = dtype_from_name(meta["dtype"].lstrip("<|") if meta["dtype"][0] in "<|" and not
                       meta["dtype"][1:2].isdigit() and len(meta["dtype"]) > 3 else meta["dtype"])
  shape = meta["shape"]
  chunk = meta["chunks"]
  sep = meta.get("dimension_separator", ".")
  out = np.zeros(shape, dtype=dt)
  for idx in _grid(shape, chunk):
    key = prefix + (sep.join(str(i) for i in idx) if idx else "0")
    val = store.get(key)
    if val is None:
      if allow_missing:
        continue
      raise ReadError("missing chunk %s" % key)
    if meta.get("compressor"):
      val = zstd_decompress(val)
    _place(out, decode_bytes(val, dt, chunk), idx, chunk)
  return out


# ---------------------------------------------------------------------------
def msgpack_value(x):
  """Decodes an aggregated msgpack leaf -> (kind, numpy value)."""
  import msgpack
  if isinstance(x, msgpack.ExtType):
    if x.code in (1, 3):
      shape, dtname, raw = msgpack.unpackb(x.data, raw=False)
      a = np.frombuffer(raw, dtype=dtype_from_name(dtname)).reshape(shape)
      return ("array" if x.code == 1 else "scalar"), a
    if x.code == 2:
      re_, im = msgpack.unpackb(x.data, raw=False)
      return "scalar", np.asarray(complex(re_, im))
    raise ReadError("unsupported msgpack ext %d" % x.code)
  if isinstance(x, bool):
    return "scalar", np.asarray(x)
  if isinstance(x, int):
    return "scalar", np.asarray(x, dtype=np.int64)
  if isinstance(x, float):
    return "scalar", np.asarray(x, dtype=np.float64)
  raise ReadError("unsupported msgpack leaf %r" % (x,))


def load_msgpack(item_dir):
  import msgpack
  p = os.path.join(item_dir, "checkpoint")
  if not os.path.exists(p):
    return None
  with open(p, "rb") as f:
    return msgpack.unpackb(f.read(), raw=False, strict_map_key=False,
                           ext_hook=lambda c, d: msgpack.ExtType(c, d))


def leaf_doc(keypath, kind, arr=None, value=None):
  d = {"keypath": keypath, "kind": kind}
  if kind == "array":
    d["dtype"], d["shape"] = arr.dtype.name, list(arr.shape)
  elif kind == "scalar":
    d["dtype"], d["shape"] = arr.dtype.name, []
    d["value"] = fixlib.py_scalar_value(arr)
  elif kind == "string":
    d["dtype"], d["shape"], d["value"] = None, None, value
  else:
    d["dtype"], d["shape"] = None, None
  return d


def read_pytree(item_dir):
  meta = fixlib.read_metadata(item_dir)
  store = Store(item_dir)
  strings = {}
  sp = os.path.join(item_dir, "_strings.json")
  if os.path.exists(sp):
    with open(sp) as f:
      strings = json.load(f)
  mp = load_msgpack(item_dir)
  leaves = []
  if meta is not None:
    allow_missing = not meta.get("store_array_data_equal_to_fill_value", False)
    for entry in meta["tree_metadata"].values():
      km = entry["key_metadata"]
      keypath = [int(k["key"]) if k["key_type"] == 1 else str(k["key"]) for k in km]
      param = ".".join(str(k["key"]) for k in km)
      vm = entry["value_metadata"]
      vt = vm["value_type"]
      if vt in EMPTY_KINDS:
        leaves.append((leaf_doc(keypath, EMPTY_KINDS[vt]), None))
      elif vt == "string":
        leaves.append((leaf_doc(keypath, "string", value=strings[param]), None))
      elif vm.get("skip_deserialize"):
        node = mp
        for k in km:
          node = node[int(k["key"])] if isinstance(node, list) else node[str(k["key"])]
        _, a = msgpack_value(node)
        kind = "array" if vt in ("np.ndarray", "jax.Array") else "scalar"
        leaves.append((leaf_doc(keypath, kind, a), a))
      else:
        a = read_array(store, param, allow_missing)
        kind = "array" if vt in ("np.ndarray", "jax.Array") else "scalar"
        leaves.append((leaf_doc(keypath, kind, a), a))
    return leaves
  if mp is None:
    raise ReadError("no _METADATA and no msgpack checkpoint in %s" % item_dir)

  def rec(x, path):
    if isinstance(x, dict) and x:
      for k in sorted(x):
        rec(x[k], path + [str(k)])
    elif isinstance(x, list) and x:
      for i, v in enumerate(x):
        rec(v, path + [i])
    elif x is None:
      leaves.append((leaf_doc(path, "none"), None))
    elif x == {}:
      leaves.append((leaf_doc(path, "empty_dict"), None))
    elif x == []:
      leaves.append((leaf_doc(path, "empty_list"), None))
    elif isinstance(x, str) and x.startswith("PLACEHOLDER://"):
      param = x[len("PLACEHOLDER://"):]
      if param in strings:
        leaves.append((leaf_doc(path, "string", value=strings[param]), None))
      else:
        a = read_array(store, param, True)
        leaves.append((leaf_doc(path, "array", a), a))
    else:
      kind, a = msgpack_value(x)
      leaves.append((leaf_doc(path, kind, a), a))

  rec(mp, [])
  return leaves


def json_leaves(obj):
  return [(d, a) for d, a, _ in fixlib.json_leaves(obj)]


def is_pytree_dir(d):
  return any(os.path.exists(os.path.join(d, f)) for f in ("_METADATA", "manifest.ocdbt", "checkpoint"))


def read_checkpoint(path):
  if is_pytree_dir(path):
    return [(None, "pytree", read_pytree(path))]
  handlers = {}
  cm = os.path.join(path, "_CHECKPOINT_METADATA")
  if os.path.exists(cm):
    with open(cm) as f:
      h = json.load(f).get("item_handlers")
    if isinstance(h, dict):
      handlers = h
  items = []
  for name in sorted(os.listdir(path)):
    d = os.path.join(path, name)
    if not os.path.isdir(d) or name.startswith("."):
      continue
    typestr = handlers.get(name, "")
    if is_pytree_dir(d) and "Json" not in typestr and "Metrics" not in typestr:
      items.append((name, "pytree", read_pytree(d)))
      continue
    files = [f for f in os.listdir(d) if f != "commit_success.txt"]
    if len(files) != 1:
      raise ReadError("cannot classify item %s" % d)
    with open(os.path.join(d, files[0])) as f:
      items.append((name, "json", json_leaves(json.load(f))))
  return items


# ---------------------------------------------------------------------------
def compare_checkpoint(name, path):
  items = read_checkpoint(path)
  with open(os.path.join(fixlib.EXPECTED, name, "inspect.json")) as f:
    exp = json.load(f)
  doc = {"items": [{"name": n, "kind": k, "leaves": [d for d, _ in lv]} for n, k, lv in items]}
  errs = []
  if json.dumps(doc, sort_keys=True) != json.dumps(exp, sort_keys=True):
    for it_got, it_exp in zip(doc["items"], exp["items"]):
      for a, b in zip(it_got["leaves"], it_exp["leaves"]):
        if a != b:
          errs.append("leaf differs: got %s expected %s" % (json.dumps(a), json.dumps(b)))
          break
    if not errs:
      errs.append("inspect differs (item count/names): %s vs %s" % (
          [(i["name"], len(i["leaves"])) for i in doc["items"]],
          [(i["name"], len(i["leaves"])) for i in exp["items"]]))
  for n, _, lv in items:
    for i, (d, a) in enumerate(lv):
      if a is None:
        continue
      p = os.path.join(fixlib.EXPECTED, name, "npy", n if n is not None else "_", "%d.npy" % i)
      buf = io.BytesIO()
      np.save(buf, fixlib.npy_view(a), allow_pickle=False)
      if not os.path.exists(p):
        errs.append("missing %s" % p)
      elif open(p, "rb").read() != buf.getvalue():
        errs.append("npy differs: %s" % p)
  return errs


STEP_RE = re.compile(r"^(?:(.+)_)?(\d+)$")


def compare_root(name, path):
  got = []
  for d in os.listdir(path):
    full = os.path.join(path, d)
    if not os.path.isdir(full) or ".orbax-checkpoint-tmp" in d or d.endswith(".partial_save"):
      continue
    m = STEP_RE.match(d)
    if not m:
      continue
    items = sorted(x for x in os.listdir(full) if os.path.isdir(os.path.join(full, x)))
    metrics = None
    mp = os.path.join(full, "metrics", "metrics")
    if os.path.exists(mp):
      with open(mp) as f:
        metrics = json.load(f)
    got.append({"step": int(m.group(2)), "dir": d, "items": items, "metrics": metrics})
  got.sort(key=lambda s: s["step"])
  with open(os.path.join(fixlib.EXPECTED, name, "steps.json")) as f:
    exp = json.load(f)
  return [] if got == exp else ["steps differ: %s vs %s" % (got, exp)]


def compare_ocdbt(name, path):
  db = od.Database(path)
  m = db.manifest()
  allv = db.all_versions(m)
  with open(os.path.join(fixlib.EXPECTED, name, "kv.json")) as f:
    exp = json.load(f)

  def keys_of(v):
    out = {}
    if v["root"] is not None:
      for k, e in db.iter_keys(v):
        val = e["inline_value"] if "inline_value" in e else db.read_ref(e["indirect"])
        out[k.decode("utf-8")] = {"size": len(val), "sha256": hashlib.sha256(val).hexdigest()}
    return dict(sorted(out.items()))
  latest = max(allv, key=lambda v: v["generation_number"])
  errs = []
  if latest["generation_number"] != exp["generation"]:
    errs.append("generation %d vs %d" % (latest["generation_number"], exp["generation"]))
  if keys_of(latest) != exp["keys"]:
    errs.append("latest keys differ")
  for v in allv:
    g = str(v["generation_number"])
    if g in exp.get("versions", {}) and keys_of(v) != exp["versions"][g]:
      errs.append("generation %s keys differ" % g)
  return errs


def check_bad():
  p = os.path.join(fixlib.CONF, "bad", "cases.json")
  if not os.path.exists(p):
    return []
  errs = []
  for c in json.load(open(p)):
    path = os.path.join(fixlib.CONF, "bad", c["path"])
    if c["error_kind"] == "uncommitted":
      if not (".orbax-checkpoint-tmp" in c["path"] or c["path"].endswith(".partial_save")):
        errs.append("%s: not an uncommitted name" % c["name"])
      continue
    if c["error_kind"] == "unsafe_path":
      continue  # a naive reader may "succeed" by reading outside; not checked here
    try:
      read_checkpoint(path)
      errs.append("%s: reference reader did NOT fail" % c["name"])
    except Exception:  # pylint: disable=broad-except
      pass
  return errs


def main():
  only = sys.argv[1] if len(sys.argv) > 1 else None
  with open(fixlib.INDEX_PATH) as f:
    index = json.load(f)
  bad = 0
  for e in index:
    if only and only not in e["name"]:
      continue
    path = os.path.join(fixlib.FIXTURES, e["path"])
    try:
      if e["kind"] == "checkpoint":
        errs = compare_checkpoint(e["name"], path)
      elif e["kind"] == "root":
        errs = compare_root(e["name"], path)
      else:
        errs = compare_ocdbt(e["name"], path)
    except Exception as ex:  # pylint: disable=broad-except
      errs = ["%s: %s" % (type(ex).__name__, ex)]
    if errs:
      bad += 1
      print("FAIL", e["name"])
      for x in errs[:5]:
        print("   ", x[:400])
  if not only:
    for x in check_bad():
      bad += 1
      print("FAIL bad/", x)
  print("%d fixtures checked, %d failing" % (len(index), bad))
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
