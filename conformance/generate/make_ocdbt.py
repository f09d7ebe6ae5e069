#!/usr/bin/env python3
"""Raw TensorStore OCDBT databases (kind "ocdbt" fixtures).

Run in a venv with tensorstore (build.sh uses the 0.12.8 one).  Writes
fixtures/<name>/ (the database directory, i.e. the one holding
manifest.ocdbt) and expected/<name>/kv.json with every key of the latest
version and of every older generation TensorStore can still read.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The independent OCDBT decoder lives in the workplace's shared reference
# material (../shared/reference beside the repository); it is not copied here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "shared", "reference"))
import fixlib  # noqa: E402
import ocdbt_decode  # noqa: E402
import tensorstore as ts  # noqa: E402

try:
  from importlib.metadata import version as _pkg_version
  TS_VERSION = _pkg_version("tensorstore")
except Exception:  # pylint: disable=broad-except
  TS_VERSION = getattr(ts, "__version__", "unknown")
INDEX = fixlib.Index("tensorstore-" + TS_VERSION)


def val(i, n):
  """Deterministic value bytes of length n."""
  return bytes(((i * 31 + j * 7) & 0xFF) for j in range(n))


def open_db(path, config=None, version=None):
  spec = {"driver": "ocdbt", "base": "file://" + path + "/"}
  if config:
    spec["config"] = config
  if version is not None:
    spec["version"] = version
  return ts.KvStore.open(spec).result()


def commit(kv, items, deletes=()):
  txn = ts.Transaction()
  k = kv.with_transaction(txn)
  futs = [k.write(key.encode() if isinstance(key, str) else key, v) for key, v in items]
  futs += [k.delete_range(ts.KvStore.KeyRange(d.encode(), d.encode() + b"\x00")) for d in deletes]
  for f in futs:
    f.result()
  txn.commit_async().result()


def read_all(kv):
  out = {}
  for key in kv.list().result():
    out[key.decode("utf-8")] = kv.read(key).result().value
  return out


def finish(name, path, exercises, notes, all_versions=True):
  latest_kv = read_all(open_db(path))
  doc = {"generation": None, "keys": fixlib.kv_doc(latest_kv)}
  _db = ocdbt_decode.Database(path)
  gens = sorted(v["generation_number"] for v in _db.all_versions(_db.manifest()))
  man = ts.ocdbt.dump(ts.KvStore.open("file://" + path + "/").result()).result()
  if max(gens) != max(v["generation_number"] for v in man["versions"]):
    print("  !! latest generation differs between decoder and tensorstore dump")
  doc["generation"] = max(gens)
  if all_versions:
    doc["versions"] = {}
    for g in gens:
      try:
        kvs = read_all(open_db(path, version=g))
      except Exception as e:  # pylint: disable=broad-except
        print("  cannot read generation", g, e)
        continue
      doc["versions"][str(g)] = fixlib.kv_doc(kvs)
  # cross-check with the pure-python decoder
  try:
    db = ocdbt_decode.Database(path)
    m = db.manifest()
    dec = {}
    for k, e in db.iter_keys(m["versions"][-1]):
      dec[k.decode("utf-8")] = e["inline_value"] if "inline_value" in e else db.read_ref(e["indirect"])
    allv = db.all_versions(m)
    if sorted(v["generation_number"] for v in allv) != sorted(gens):
      print("  !! ocdbt_decode generations differ", name)
    if fixlib.kv_doc(dec) != doc["keys"]:
      print("  !! ocdbt_decode disagrees with tensorstore on", name)
      notes += " (ocdbt_decode.py disagrees with TensorStore!)"
  except Exception as e:  # pylint: disable=broad-except
    print("  ocdbt_decode cross-check skipped:", e)
  fixlib.write_json(os.path.join(fixlib.EXPECTED, name, "kv.json"), doc)
  INDEX.add(name, "tensorstore", name, "ocdbt", exercises,
            notes + " Latest generation %d, %d keys, %d generations listed in kv.json." %
            (doc["generation"], len(doc["keys"]), len(doc.get("versions", {}))))
  print("  %s: generation %d, %d keys" % (name, doc["generation"], len(doc["keys"])))


def fresh(name):
  p = os.path.join(fixlib.FIXTURES, name)
  shutil.rmtree(p, ignore_errors=True)
  os.makedirs(p)
  shutil.rmtree(os.path.join(fixlib.EXPECTED, name), ignore_errors=True)
  return p


def main():
  tag = "ts" + TS_VERSION.replace(".", "_")

  # 1. multi-level B+tree: small nodes, small inline limit, prefixes
  name = tag + "_btree_multilevel"
  p = fresh(name)
  kv = open_db(p, {"max_decoded_node_bytes": 600, "max_inline_value_bytes": 16})
  for part in range(2):
    commit(kv, [("p%d/arr%04d/c/0" % (i % 2, i), val(i, (i * 7) % 40))
                for i in range(part * 200, part * 200 + 200)])
  finish(name, p, ["ocdbt", "btree_interior", "key_prefixes", "out_of_line", "inline"],
         "400 keys in 2 commits, max_decoded_node_bytes=600, max_inline_value_bytes=16: "
         "B+tree of height >= 2 with subtree_common_prefix_length > 0, inline and out-of-line values, "
         "zstd-compressed nodes.")

  # 2. version tree: arity_log2=2, many commits
  name = tag + "_version_tree"
  p = fresh(name)
  kv = open_db(p, {"version_tree_arity_log2": 2})
  for i in range(40):
    deletes = ["k%03d" % (i - 5)] if i % 10 == 9 else ()
    commit(kv, [("k%03d" % i, val(i, 3 + i))], deletes)
  finish(name, p, ["ocdbt", "version_tree", "version_nodes", "deletes"],
         "40 commits (one key each; every 10th also deletes an older key) with "
         "version_tree_arity_log2=2: manifest holds the newest versions inline plus version-tree "
         "node references of heights 1 and 2; kv.json lists every generation.")

  # 3. numbered manifests
  name = tag + "_numbered_manifest"
  p = fresh(name)
  kv = open_db(p, {"manifest_kind": "numbered", "max_inline_value_bytes": 8})
  for i in range(5):
    commit(kv, [("n/%d" % i, val(i, 4 + 6 * i)), ("shared", val(100 + i, 10))])
  finish(name, p, ["ocdbt", "numbered_manifest", "out_of_line"],
         "manifest_kind=numbered: manifest.ocdbt holds only the config; the versions live in "
         "manifest.%016x files (latest = highest number).")

  # 4. raw (uncompressed) envelopes
  name = tag + "_raw_compression"
  p = fresh(name)
  kv = open_db(p, {"compression": None, "max_inline_value_bytes": 32})
  commit(kv, [("a", b"alpha"), ("b/big", val(1, 100)), ("ключ/ü", "значение".encode())])
  commit(kv, [("c", b"")], deletes=["a"])
  commit(kv, [("b/big", val(2, 50))])
  finish(name, p, ["ocdbt", "raw_envelopes", "utf8_keys", "empty_value", "deletes"],
         "config compression raw: manifest and nodes use compression format 0. UTF-8 keys, an "
         "empty value, an overwrite and a delete.")

  # 5. empty database (everything deleted)
  name = tag + "_emptied"
  p = fresh(name)
  kv = open_db(p, {})
  commit(kv, [("x", b"1"), ("y", b"2")])
  commit(kv, [], deletes=["x", "y"])
  finish(name, p, ["ocdbt", "empty_root"],
         "Two keys written then deleted: the latest generation has no root (offset/length "
         "2^64-1 sentinel) and zero keys.")

  INDEX.save()


if __name__ == "__main__":
  main()
