#!/usr/bin/env python3
"""Regenerates the OCDBT test databases in this directory.

Usage: make_test_dbs.py PATH/TO/ocdbt_decode.py
(needs the `zstandard` module; ocdbt_decode.py is the independent Python
decoder/encoder described in format-notes.md).

Every database gets an `expected.json` written by `ocdbt_decode.py list
--json --hash`, so the Rust tests (tests/ocdbt_databases.rs) need no Python.
"""

import importlib.util
import json
import os
import shutil
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("ocdbt_decode", sys.argv[1])
od = importlib.util.module_from_spec(spec)
spec.loader.exec_module(od)


def fresh(name):
  path = os.path.join(here, name)
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(os.path.join(path, "d"))
  return path


def source_items():
  """23 keys shaped like an Orbax item: zarr.json files and chunks, some > 1024 bytes."""
  items = []
  for i in range(7):
    items.append((b"arr%d/zarr.json" % i, b'{"zarr_format":3,"node_type":"array","i":%d}' % i))
    items.append((b"arr%d/c/0" % i, bytes((i * 7 + j) % 256 for j in range(300 + 400 * i))))
  items.append((b"_strings.json", b"{}"))
  items.append((b"scalar/c", b"\x01\x00\x00\x00"))
  items.append((b"empty", b""))
  for i in range(6):
    items.append((b"deep/prefix/key/%02d" % i, b"v" * (i + 1)))
  return sorted(items)


def write_single_leaf_db(path, items):
  """All values inline in one leaf node (the source for `repack`)."""
  rel = b"d/" + b"a" * 32
  node = od.encode_leaf_node([(k, ("inline", v)) for k, v in items], 0)
  with open(os.path.join(path, rel.decode()), "wb") as f:
    f.write(node)
  cfg = od.encode_config(bytes(16), zstd_level=None)
  version = dict(generation_number=1, root_height=0, root=((b"", rel), 0, len(node)),
                 num_keys=len(items), num_tree_bytes=len(node), num_indirect_value_bytes=0,
                 commit_time=1_700_000_000_000_000_000)
  with open(os.path.join(path, "manifest.ocdbt"), "wb") as f:
    f.write(od.encode_manifest_single(cfg, [version], 0))


def write_merged_db(path):
  """An Orbax-merge-shaped database: the root (interior, in d/) has one leaf
  child in d/ and one in ocdbt.process_0/d/; the latter's own table names
  ("", "d/<hex>"), which resolves to ocdbt.process_0/d/<hex> because base
  paths accumulate. The first leaf also references a value with base path
  "ocdbt.process_1/"."""
  os.makedirs(os.path.join(path, "ocdbt.process_0", "d"))
  os.makedirs(os.path.join(path, "ocdbt.process_1", "d"))
  top = b"d/" + b"1" * 32
  p0_values = b"d/" + b"2" * 32
  p1_values = b"d/" + b"3" * 32
  big0 = bytes(range(256)) * 6
  big1 = bytes(reversed(range(256))) * 5
  with open(os.path.join(path, "ocdbt.process_1", p1_values.decode()), "wb") as f:
    f.write(big1)
  # The root's entry for this child has subtree_common_prefix_length 2, so
  # the child stores its keys without the shared "a/".
  leaf_a = od.encode_leaf_node([
      (b"c/0", ("ref", (b"ocdbt.process_1/", p1_values), 0, len(big1))),
      (b"zarr.json", ("inline", b'{"a":1}')),
  ], 1)
  # The child stored in ocdbt.process_0/d/...: its value file is named
  # relative to that directory.
  leaf_b = od.encode_leaf_node([
      (b"b/c/0", ("ref", (b"", p0_values), 0, len(big0))),
      (b"b/zarr.json", ("inline", b'{"b":2}')),
  ], 0)
  with open(os.path.join(path, "ocdbt.process_0", p0_values.decode()), "wb") as f:
    f.write(big0 + leaf_b)
  children = [
      dict(key=b"a/c/0", subtree_common_prefix_length=2, ref=((b"", top), 0, len(leaf_a)),
           num_keys=2, num_tree_bytes=len(leaf_a), num_indirect_value_bytes=len(big1)),
      dict(key=b"b/c/0", subtree_common_prefix_length=0,
           ref=((b"ocdbt.process_0/", p0_values), len(big0), len(leaf_b)),
           num_keys=2, num_tree_bytes=len(leaf_b), num_indirect_value_bytes=len(big0)),
  ]
  root = od.encode_interior_node(1, children, 1)
  with open(os.path.join(path, top.decode()), "wb") as f:
    f.write(leaf_a + root)
  cfg = od.encode_config(bytes(range(16)), max_inline=1024, max_node=100000000, zstd_level=0)
  version = dict(generation_number=1, root_height=1, root=((b"", top), len(leaf_a), len(root)),
                 num_keys=4, num_tree_bytes=len(leaf_a) + len(leaf_b) + len(root),
                 num_indirect_value_bytes=len(big0) + len(big1), commit_time=1_700_000_000_000_000_000)
  with open(os.path.join(path, "manifest.ocdbt"), "wb") as f:
    f.write(od.encode_manifest_single(cfg, [version], 1))


def expected(path):
  m, rows = od.list_db(path, with_hash=True)
  v = m["versions"][-1]
  listing = {"generation": v["generation_number"], "commit_time": v["commit_time"],
             "root_height": v["root_height"], "keys": rows}
  with open(os.path.join(path, "expected.json"), "w") as f:
    json.dump(listing, f, indent=1)
    f.write("\n")


def main():
  od.write_demo(fresh("demo_raw"), compression=0)
  od.write_demo(fresh("demo_zstd"), compression=1)
  od.write_demo(fresh("demo_numbered"), compression=1, numbered=True)
  src = fresh("source")
  write_single_leaf_db(src, source_items())
  # repack re-encodes with fresh random data file names.
  shutil.rmtree(fresh("fanout4"))
  od.repack_db(src, os.path.join(here, "fanout4"), compression=1, fanout=4)
  shutil.rmtree(fresh("fanout4_raw"))
  od.repack_db(src, os.path.join(here, "fanout4_raw"), compression=0, fanout=4)
  shutil.rmtree(src)
  write_merged_db(fresh("merged"))
  for name in ["demo_raw", "demo_zstd", "demo_numbered", "fanout4", "fanout4_raw", "merged"]:
    expected(os.path.join(here, name))


if __name__ == "__main__":
  main()
