"""Helpers shared by the fixture generators (work with every pinned venv).

Computes the expected outputs of `orbax inspect --json` / `orbax cat --npy`
from the ground-truth values the generators saved, and cross-checks them
against what TensorStore reads back from disk (and, where the API allows,
against what Orbax loads).  See ../README.md for the protocol.
"""

import base64
import json
import math
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONF = os.path.dirname(HERE)
FIXTURES = os.path.join(CONF, "fixtures")
EXPECTED = os.path.join(CONF, "expected")
INDEX_PATH = os.path.join(CONF, "fixtures.json")

try:
  import ml_dtypes  # noqa: F401
except ImportError:  # pragma: no cover
  ml_dtypes = None

# dtypes numpy has no native code for -> how `orbax cat --npy` writes them.
_BITS_U16 = {"bfloat16"}


def npy_view(arr):
  """The array `orbax cat --npy` must print for a value of on-disk dtype."""
  arr = np.asarray(arr)
  name = arr.dtype.name
  if name in _BITS_U16:
    out = arr.view(np.uint16)
  elif name.startswith("float8_") or name.startswith("float4_") or name.startswith("float6_"):
    out = arr.view(np.uint8)
  elif name in ("int4", "int2", "int1"):
    out = arr.astype(np.int8)
  elif name in ("uint4", "uint2", "uint1"):
    out = arr.astype(np.uint8)
  else:
    out = arr
  # np.ascontiguousarray would turn a 0-d array into shape (1,).
  return np.require(out, requirements="C")


def py_scalar_value(x):
  """JSON value of a scalar leaf (x is a numpy 0-d array or numpy scalar)."""
  x = np.asarray(x)
  name = x.dtype.name
  if name == "bool":
    return bool(x)
  if x.dtype.kind in "iu" or name in ("int4", "int2", "uint4", "uint2"):
    return int(x.astype(np.int64)) if x.dtype.kind != "u" else int(x)
  if x.dtype.kind == "c":
    return [_fval(float(x.real)), _fval(float(x.imag))]
  return _fval(float(x.astype(np.float64)))


def _fval(f):
  if math.isnan(f):
    return "nan"
  if math.isinf(f):
    return "inf" if f > 0 else "-inf"
  return f


KIND_BY_VALUE_TYPE = {
    "jax.Array": "array",
    "np.ndarray": "array",
    "scalar": "scalar",
    "string": "string",
    "None": "none",
    "Dict": "empty_dict",
    "List": "empty_list",
    "Tuple": "empty_tuple",
    "NamedTuple": "empty_tuple",
}


def is_empty_or_none(x):
  return x is None or (isinstance(x, (dict, list, tuple)) and len(x) == 0)


def key_str(k):
  """str() of one jax keypath entry as Orbax uses it for param names."""
  import jax
  tu = jax.tree_util
  if isinstance(k, tu.DictKey):
    return str(k.key)
  if isinstance(k, tu.SequenceKey):
    return str(k.idx)
  if isinstance(k, tu.GetAttrKey):
    return str(k.name)
  if hasattr(tu, "FlattenedIndexKey") and isinstance(k, tu.FlattenedIndexKey):
    return str(k.key)
  return str(k)


def flatten(tree):
  """[(tuple of key strings, leaf)] in jax flatten order, empties as leaves."""
  import jax
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_empty_or_none)
  return [(tuple(key_str(k) for k in path), leaf) for path, leaf in flat]


def to_numpy(x):
  import jax
  if isinstance(x, jax.Array):
    try:
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    except Exception:  # pylint: disable=broad-except
      pass
    return np.asarray(x)
  return np.asarray(x)


def scalar_numpy(x):
  """on-disk value of a scalar leaf (Python int -> int64, float -> float64)."""
  if isinstance(x, bool):
    return np.asarray(x, dtype=np.bool_)
  if isinstance(x, int):
    return np.asarray(x, dtype=np.int64)
  if isinstance(x, float):
    return np.asarray(x, dtype=np.float64)
  if isinstance(x, complex):
    return np.asarray(x, dtype=np.complex128)
  return np.asarray(x)


def read_metadata(item_dir):
  p = os.path.join(item_dir, "_METADATA")
  if not os.path.exists(p):
    return None
  with open(p) as f:
    return json.load(f)


def pytree_leaves(item_dir, tree, casts=None, scalar_casts=None):
  """Expected leaves for a PyTree item.

  item_dir: the item directory on disk (to read _METADATA's order and kinds).
  tree: ground truth that was saved.
  casts: {param_name: dtype} for arrays cast on save.
  Returns a list of (leaf_doc, npy_array_or_None, param_name).
  """
  casts = casts or {}
  gt = flatten(tree)
  meta = read_metadata(item_dir)
  out = []
  if meta is not None:
    entries = list(meta["tree_metadata"].values())
    by_path = dict(gt)
    if len(entries) != len(gt) or len(by_path) != len(gt):
      raise AssertionError("%s: _METADATA has %d entries, ground truth %d" %
                           (item_dir, len(entries), len(gt)))
    # Leaves follow the order of the _METADATA entries (= JAX flatten order
    # for a normal save; partial saves append later additions at the end).
    for entry in entries:
      keys = entry["key_metadata"]
      names = tuple(str(k["key"]) for k in keys)
      if names not in by_path:
        raise AssertionError("%s: %r not in ground truth" % (item_dir, names))
      leaf = by_path[names]
      keypath = [int(k["key"]) if k.get("key_type") == 1 else str(k["key"])
                 for k in keys]
      vt = entry["value_metadata"]["value_type"]
      out.append(_leaf(keypath, KIND_BY_VALUE_TYPE[vt], leaf,
                       casts.get(".".join(names)), ".".join(names)))
  else:
    # no _METADATA (orbax < 0.4.3): derive from the ground truth.  A reader
    # only sees the msgpack structure + zarr arrays, so every leaf stored in
    # TensorStore is reported as an "array" (rank 0 for Python scalars);
    # only values kept inside the msgpack file itself can be "scalar".
    import jax
    aggregated = msgpack_aggregated(item_dir)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_empty_or_none)
    for p, leaf in flat:
      keypath = [k.idx if isinstance(k, jax.tree_util.SequenceKey) else key_str(k)
                 for k in p]
      names = ".".join(key_str(k) for k in p)
      kind = _guess_kind(leaf)
      if kind == "scalar" and names not in aggregated:
        kind = "array"
        leaf = scalar_numpy(leaf)
      out.append(_leaf(keypath, kind, leaf, casts.get(names), names))
  return out


def metadata_order_is_flatten_order(item_dir, tree):
  meta = read_metadata(item_dir)
  if meta is None:
    return True
  got = [tuple(str(k["key"]) for k in e["key_metadata"]) for e in meta["tree_metadata"].values()]
  return got == [p for p, _ in flatten(tree)]


def _guess_kind(leaf):
  import jax
  if leaf is None:
    return "none"
  if isinstance(leaf, dict):
    return "empty_dict"
  if isinstance(leaf, list):
    return "empty_list"
  if isinstance(leaf, tuple):
    return "empty_tuple"
  if isinstance(leaf, str):
    return "string"
  if isinstance(leaf, (np.ndarray, jax.Array)):
    return "array"
  return "scalar"


def _leaf(keypath, kind, leaf, cast, param):
  doc = {"keypath": keypath, "kind": kind}
  arr = None
  if kind == "array":
    arr = to_numpy(leaf)
    if cast is not None:
      arr = arr.astype(cast)
    doc["dtype"] = arr.dtype.name
    doc["shape"] = list(arr.shape)
  elif kind == "scalar":
    arr = scalar_numpy(leaf)
    if cast is not None:
      arr = arr.astype(cast)
    doc["dtype"] = arr.dtype.name
    doc["shape"] = []
    doc["value"] = py_scalar_value(arr)
  elif kind == "string":
    doc["dtype"] = None
    doc["shape"] = None
    doc["value"] = leaf
  else:
    doc["dtype"] = None
    doc["shape"] = None
  return doc, arr, param


def json_leaves(obj):
  """Expected leaves for a JSON item."""
  out = []

  def rec(x, path):
    if isinstance(x, dict):
      if not x:
        out.append(({"keypath": path, "kind": "empty_dict", "dtype": None, "shape": None}, None, None))
      for k in sorted(x):
        rec(x[k], path + [str(k)])
    elif isinstance(x, list):
      if not x:
        out.append(({"keypath": path, "kind": "empty_list", "dtype": None, "shape": None}, None, None))
      for i, v in enumerate(x):
        rec(v, path + [i])
    elif x is None:
      out.append(({"keypath": path, "kind": "none", "dtype": None, "shape": None}, None, None))
    elif isinstance(x, str):
      out.append(({"keypath": path, "kind": "string", "dtype": None, "shape": None, "value": x}, None, None))
    elif isinstance(x, bool):
      a = np.asarray(x, dtype=np.bool_)
      out.append(({"keypath": path, "kind": "scalar", "dtype": "bool", "shape": [], "value": x}, a, None))
    elif isinstance(x, int):
      a = np.asarray(x, dtype=np.int64)
      out.append(({"keypath": path, "kind": "scalar", "dtype": "int64", "shape": [], "value": x}, a, None))
    elif isinstance(x, float):
      a = np.asarray(x, dtype=np.float64)
      out.append(({"keypath": path, "kind": "scalar", "dtype": "float64", "shape": [], "value": _fval(x)}, a, None))
    else:
      raise TypeError(type(x))

  rec(obj, [])
  return out


def write_expected(name, items):
  """items: list of (item_name or None, kind, leaves) -> expected/<name>/."""
  d = os.path.join(EXPECTED, name)
  shutil.rmtree(d, ignore_errors=True)
  os.makedirs(d)
  items = sorted(items, key=lambda it: (it[0] is not None, it[0] or ""))
  doc = {"items": []}
  for item_name, kind, leaves in items:
    doc["items"].append({"name": item_name, "kind": kind,
                         "leaves": [l[0] for l in leaves]})
    sub = item_name if item_name is not None else "_"
    for i, (leaf_doc, arr, _) in enumerate(leaves):
      if arr is None:
        continue
      os.makedirs(os.path.join(d, "npy", sub), exist_ok=True)
      with open(os.path.join(d, "npy", sub, "%d.npy" % i), "wb") as f:
        np.save(f, npy_view(arr), allow_pickle=False)
  with open(os.path.join(d, "inspect.json"), "w") as f:
    f.write(json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------
# Cross-checks
# ---------------------------------------------------------------------------
def ts_read(item_dir, param, meta=None):
  """Reads one array leaf straight from disk with TensorStore."""
  import tensorstore as ts
  if meta is None:
    meta = read_metadata(item_dir) or {}
  zarr3 = meta.get("use_zarr3", False)
  ocdbt = os.path.exists(os.path.join(item_dir, "manifest.ocdbt"))
  if ocdbt:
    kv = {"driver": "ocdbt", "base": "file://" + item_dir + "/",
          "path": (param + "/") if param else ""}
  else:
    kv = {"driver": "file", "path": os.path.join(item_dir, param) + "/"}
  spec = {"driver": "zarr3" if zarr3 else "zarr", "kvstore": kv}
  t = ts.open(spec, open=True, read=True).result()
  return np.asarray(t.read().result())


def same_bits(a, b):
  a = np.asarray(a)
  b = np.asarray(b)
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_on_disk(item_dir, leaves, problems):
  """TensorStore read of every array/scalar leaf must equal the ground truth."""
  meta = read_metadata(item_dir) or {}
  for doc, arr, param in leaves:
    if arr is None or param is None:
      continue
    try:
      got = ts_read(item_dir, param, meta)
    except Exception as e:  # pylint: disable=broad-except
      problems.append("ts read %s/%s failed: %s" % (item_dir, param, str(e)[:200]))
      continue
    if not same_bits(got, arr):
      problems.append("on-disk %r differs: disk %s%s vs expected %s%s" % (
          param, got.dtype, got.shape, np.asarray(arr).dtype, np.asarray(arr).shape))


def check_loaded(loaded_tree, leaves, problems, what="orbax load"):
  """Compare an Orbax-loaded tree with the expected leaves (by param name)."""
  try:
    got = {".".join(p): v for p, v in flatten(loaded_tree)}
  except Exception as e:  # pylint: disable=broad-except
    problems.append("%s: cannot flatten: %s" % (what, e))
    return
  for doc, arr, param in leaves:
    if param is None:
      continue
    if param not in got:
      problems.append("%s: %r missing" % (what, param))
      continue
    v = got[param]
    kind = doc["kind"]
    if kind == "string":
      if v != doc["value"]:
        problems.append("%s: string %r = %r" % (what, param, v))
    elif kind in ("array", "scalar"):
      try:
        a = to_numpy(v)
        e = np.asarray(arr)
        if a.shape != e.shape:
          problems.append("%s: %r shape %s vs %s" % (what, param, a.shape, e.shape))
          continue
        if a.dtype != e.dtype:
          # Orbax may give Python scalars / other dtype; compare values
          a = a.astype(e.dtype)
          if kind == "array":
            problems.append("%s: %r loads as dtype %s (on disk %s)" % (
                what, param, to_numpy(v).dtype, e.dtype))
        if a.tobytes() != e.tobytes():
          problems.append("%s: %r values differ" % (what, param))
      except Exception as ex:  # pylint: disable=broad-except
        problems.append("%s: %r compare failed: %s" % (what, param, ex))
    else:
      expect = {"none": (type(None),), "empty_dict": (dict,), "empty_list": (list,),
                "empty_tuple": (tuple, list)}[kind]
      if not isinstance(v, expect):
        problems.append("%s: %r loads as %s (kind %s)" % (what, param, type(v).__name__, kind))


# ---------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------
class Index:

  def __init__(self, version):
    self.version = version
    self.entries = []
    self.removed = set()

  def add(self, name, api, path, kind, exercises, notes=""):
    self.entries.append({"name": name, "orbax_version": self.version, "api": api,
                         "path": path, "kind": kind, "exercises": exercises,
                         "notes": notes})

  def save(self):
    old = []
    if os.path.exists(INDEX_PATH):
      with open(INDEX_PATH) as f:
        old = json.load(f)
    names = {e["name"] for e in self.entries} | self.removed
    merged = [e for e in old if e["name"] not in names]
    merged += self.entries
    merged.sort(key=lambda e: e["name"])
    write_json(INDEX_PATH, merged)


def kv_doc(kvs):
  import hashlib
  return {k: {"size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
          for k, v in sorted(kvs.items())}


def b64name(name):
  return base64.urlsafe_b64encode(name.encode()).decode()


def msgpack_aggregated(item_dir):
  """Param names whose values live in the legacy msgpack `checkpoint` file
  (i.e. not 'PLACEHOLDER://...' strings)."""
  p = os.path.join(item_dir, "checkpoint")
  if not os.path.exists(p):
    return set()
  import msgpack
  with open(p, "rb") as f:
    obj = msgpack.unpackb(f.read(), raw=False, strict_map_key=False,
                          ext_hook=lambda code, data: msgpack.ExtType(code, data))
  out = set()

  def rec(x, path):
    if isinstance(x, dict) and x:
      for k, v in x.items():
        rec(v, path + [str(k)])
    elif isinstance(x, list) and x:
      for i, v in enumerate(x):
        rec(v, path + [str(i)])
    elif isinstance(x, str) and x.startswith("PLACEHOLDER://"):
      pass
    elif x is None or x == {} or x == []:
      pass  # empty values are stored literally
    else:
      out.add(".".join(path))

  rec(obj, [])
  return out
