#!/usr/bin/env python3
"""Derives the corrupt fixtures in conformance/bad/ from good 0.12.8 fixtures.

Needs only the standard library + `zstandard` (through ocdbt_decode.py).
Run after make_fixtures.py (0.12.8).  Writes conformance/bad/<case>/ and
conformance/bad/cases.json.
"""

import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The independent OCDBT decoder lives in the workplace's shared reference
# material (../shared/reference beside the repository); it is not copied here.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "shared", "reference"))
import fixlib  # noqa: E402
import ocdbt_decode as od  # noqa: E402

BAD = os.path.join(fixlib.CONF, "bad")
CASES = []

# good sources (all written by orbax-checkpoint 0.12.8)
SRC_OCDBT = "v0_12_8_v1_out_of_line"      # state/: merged DB + ocdbt.process_0 with an out-of-line chunk
SRC_Z3 = "v0_12_8_v1_files_zarr3"         # no OCDBT, zarr3, leaves a, b, r0, sc, s, sub.c, sub.n
SRC_Z2 = "v0_12_8_v1_files_zarr2"         # no OCDBT, zarr2, same tree


def case(name, src, error_kind, mentions, description, dest_name=None):
  """Copies fixtures/<src> to bad/<dest_name or name> and registers the case."""
  dest = os.path.join(BAD, dest_name or name)
  shutil.rmtree(dest, ignore_errors=True)
  shutil.copytree(os.path.join(fixlib.FIXTURES, src), dest)
  CASES.append({"name": name, "path": dest_name or name, "error_kind": error_kind,
                "mentions": mentions, "description": description + " (derived from fixtures/%s)" % src})
  return dest


def rd(p):
  with open(p, "rb") as f:
    return f.read()


def wr(p, data):
  with open(p, "wb") as f:
    f.write(data)


def flip(p, offset, mask=0x01):
  d = bytearray(rd(p))
  d[offset] ^= mask
  wr(p, bytes(d))


def manifest_info(db_dir):
  db = od.Database(db_dir)
  return db, db.manifest()


def encode_manifest_from(m, files_map=None, body_hook=None, version_hook=None):
  """Re-encodes a decoded single-kind manifest (no version nodes)."""
  c = m["config"]
  cfg = od.encode_config(bytes.fromhex(c["uuid"]), 0, c["max_inline_value_bytes"],
                         c["max_decoded_node_bytes"], c["version_tree_arity_log2"],
                         c["compression"].get("level") if c["compression"]["id"] == "zstd" else None)
  versions = []
  for v in m["versions"]:
    r = v["root"]
    f = r["file"]
    if files_map:
      f = files_map(f)
    versions.append({"generation_number": v["generation_number"], "root_height": v["root_height"],
                     "root": (f, r["offset"], r["length"]), "num_keys": v["num_keys"],
                     "num_tree_bytes": v["num_tree_bytes"],
                     "num_indirect_value_bytes": v["num_indirect_value_bytes"],
                     "commit_time": v["commit_time"]})
  if version_hook:
    version_hook(versions)
  return od.encode_manifest_single(cfg, versions, compression=0)


def raw_envelope(magic, inner_after_length, length_override=None, version=0):
  """magic + length + version varint + compression 0 + body + crc (crc recomputed)."""
  inner = od.put_varint(version) + bytes([0]) + inner_after_length
  length = 4 + 8 + len(inner) + 4
  head = struct.pack(">I", magic) + struct.pack("<Q", length_override or length)
  out = head + inner
  return out + struct.pack("<I", od.crc32c(out))


def manifest_body(db_dir):
  _, r = od.decode_envelope(rd(os.path.join(db_dir, "manifest.ocdbt")), od.MANIFEST_MAGIC)
  return r.d


def main():
  shutil.rmtree(BAD, ignore_errors=True)
  os.makedirs(BAD)
  for s in (SRC_OCDBT, SRC_Z3, SRC_Z2):
    if not os.path.isdir(os.path.join(fixlib.FIXTURES, s)):
      sys.exit("missing source fixture %s: run make_fixtures.py with 0.12.8 first" % s)

  # ---------------------------------------------------------------- checksum
  d = case("checksum_manifest_body", SRC_OCDBT, "checksum", ["manifest.ocdbt"],
           "One byte of the zstd body of state/manifest.ocdbt flipped; stored CRC-32C no longer matches.")
  flip(os.path.join(d, "state", "manifest.ocdbt"), 20)

  d = case("checksum_btree_node", SRC_OCDBT, "checksum", ["d/"],
           "One byte inside the root B+tree node of the merged DB (state/d/<hex>) flipped.")
  _, m = manifest_info(os.path.join(d, "state"))
  root = m["versions"][-1]["root"]
  flip(os.path.join(d, "state", root["file"][1].decode()), root["offset"] + root["length"] // 2)

  d = case("checksum_zarr3_shard_index", SRC_Z3, "checksum", ["a/c/0"],
           "Non-OCDBT zarr3: one byte of the shard index (offset/nbytes table at the end of "
           "state/a/c/0) flipped, its crc32c no longer matches.")
  p = os.path.join(d, "state", "a", "c", "0")
  flip(p, len(rd(p)) - 4 - 16)

  d = case("checksum_zarr3_shard_index_ocdbt", SRC_OCDBT, "checksum", ["noise/c/0/0"],
           "OCDBT zarr3: a byte of the shard index of the out-of-line value noise/c/0/0 "
           "(stored in state/ocdbt.process_0/d/<hex>, not covered by an OCDBT CRC) flipped.")
  db, m = manifest_info(os.path.join(d, "state"))
  for k, e in db.iter_keys(m["versions"][-1]):
    if k == b"noise/c/0/0":
      ref = e["indirect"]
      fp = os.path.join(d, "state", (ref["file"][0] + ref["file"][1]).decode())
      flip(fp, ref["offset"] + ref["length"] - 4 - 8)

  # ---------------------------------------------------------------- truncated
  d = case("truncated_manifest", SRC_OCDBT, "truncated", ["manifest.ocdbt"],
           "state/manifest.ocdbt cut to half its size (shorter than its own length field).")
  p = os.path.join(d, "state", "manifest.ocdbt")
  wr(p, rd(p)[: len(rd(p)) // 2])

  d = case("truncated_btree_data_file", SRC_OCDBT, "truncated", ["d/"],
           "The merged DB's data file state/d/<hex> truncated so it ends inside the root node "
           "the manifest references.")
  _, m = manifest_info(os.path.join(d, "state"))
  root = m["versions"][-1]["root"]
  p = os.path.join(d, "state", root["file"][1].decode())
  wr(p, rd(p)[: root["offset"] + root["length"] - 10])

  d = case("truncated_value_data_file", SRC_OCDBT, "truncated", ["ocdbt.process_0/d/"],
           "The per-process data file holding the 4126-byte out-of-line value noise/c/0/0 "
           "truncated to 1000 bytes.")
  db, m = manifest_info(os.path.join(d, "state"))
  for k, e in db.iter_keys(m["versions"][-1]):
    if "indirect" in e:
      ref = e["indirect"]
      fp = os.path.join(d, "state", (ref["file"][0] + ref["file"][1]).decode())
      wr(fp, rd(fp)[:1000])

  # ---------------------------------------------------------------- not_found
  d = case("not_found_btree_data_file", SRC_OCDBT, "not_found", ["d/"],
           "The merged DB's data file state/d/<hex> (root B+tree node) deleted.")
  _, m = manifest_info(os.path.join(d, "state"))
  os.remove(os.path.join(d, "state", m["versions"][-1]["root"]["file"][1].decode()))

  d = case("not_found_value_data_file", SRC_OCDBT, "not_found", ["ocdbt.process_0/d/"],
           "The per-process data file state/ocdbt.process_0/d/<hex> holding the out-of-line value "
           "noise/c/0/0 deleted.")
  db, m = manifest_info(os.path.join(d, "state"))
  for k, e in db.iter_keys(m["versions"][-1]):
    if "indirect" in e:
      ref = e["indirect"]
      fp = os.path.join(d, "state", (ref["file"][0] + ref["file"][1]).decode())
      if os.path.exists(fp):
        os.remove(fp)

  d = case("not_found_chunk_zarr3", SRC_Z3, "not_found", ["a/c/0"],
           "Non-OCDBT zarr3 chunk file state/a/c/0 deleted while _METADATA says "
           "store_array_data_equal_to_fill_value=true (so it must not be filled).")
  os.remove(os.path.join(d, "state", "a", "c", "0"))

  d = case("not_found_chunk_zarr2", SRC_Z2, "not_found", ["b/0.0"],
           "Non-OCDBT zarr2 chunk file state/b/0.0 deleted while "
           "store_array_data_equal_to_fill_value=true.")
  os.remove(os.path.join(d, "state", "b", "0.0"))

  d = case("not_found_zarr_json", SRC_Z3, "not_found", ["a/zarr.json"],
           "Non-OCDBT zarr3 array metadata state/a/zarr.json deleted.")
  os.remove(os.path.join(d, "state", "a", "zarr.json"))

  # ---------------------------------------------------------------- corrupt
  d = case("corrupt_metadata_json", SRC_Z3, "corrupt", ["_METADATA"],
           "state/_METADATA replaced by invalid JSON.")
  wr(os.path.join(d, "state", "_METADATA"), b'{"tree_metadata": {"(\'a\',)": {"key_metadata": [')

  d = case("corrupt_manifest_magic", SRC_OCDBT, "corrupt", ["manifest.ocdbt"],
           "state/manifest.ocdbt with a wrong magic number (0x0cdb3a2b) and a recomputed, valid CRC-32C.")
  p = os.path.join(d, "state", "manifest.ocdbt")
  data = bytearray(rd(p))
  data[3] ^= 0x01
  data[-4:] = struct.pack("<I", od.crc32c(bytes(data[:-4])))
  wr(p, bytes(data))

  d = case("unsupported_manifest_format_version", SRC_OCDBT, "unsupported", ["manifest.ocdbt", "version"],
           "state/manifest.ocdbt re-encoded (raw) with format version 1 and a valid CRC-32C.")
  body = manifest_body(os.path.join(d, "state"))
  wr(os.path.join(d, "state", "manifest.ocdbt"), raw_envelope(od.MANIFEST_MAGIC, body, version=1))

  d = case("corrupt_manifest_bad_varint", SRC_OCDBT, "corrupt", ["manifest.ocdbt"],
           "state/manifest.ocdbt re-encoded (raw, valid CRC) with max_inline_value_bytes written as "
           "an 11-byte varint (all continuation bits set: overflow).")
  body = manifest_body(os.path.join(d, "state"))
  # config: uuid(16) kind(1) then max_inline varint
  i = 17
  while body[i] & 0x80:
    i += 1
  bad = body[:17] + b"\xff" * 10 + b"\x01" + body[i + 1:]
  wr(os.path.join(d, "state", "manifest.ocdbt"), raw_envelope(od.MANIFEST_MAGIC, bad))

  d = case("corrupt_manifest_kind", SRC_OCDBT, "corrupt", ["manifest.ocdbt"],
           "state/manifest.ocdbt re-encoded (raw, valid CRC) with manifest_kind byte 7 (only 0/1 valid).")
  body = bytearray(manifest_body(os.path.join(d, "state")))
  body[16] = 7
  wr(os.path.join(d, "state", "manifest.ocdbt"), raw_envelope(od.MANIFEST_MAGIC, bytes(body)))

  d = case("corrupt_zarr3_unknown_codec", SRC_Z3, "corrupt", ["frobnicate"],
           "state/a/zarr.json names an unknown inner codec 'frobnicate' instead of zstd.")
  p = os.path.join(d, "state", "a", "zarr.json")
  wr(p, rd(p).replace(b'"name":"zstd"', b'"name":"frobnicate"'))

  d = case("corrupt_zarr3_bad_data_type", SRC_Z3, "corrupt", ["a/zarr.json"],
           "state/a/zarr.json declares data_type 'int33'.")
  p = os.path.join(d, "state", "a", "zarr.json")
  wr(p, rd(p).replace(b'"data_type":"int32"', b'"data_type":"int33"'))

  # ---------------------------------------------------------------- limit
  d = case("limit_zarr3_huge_shape", SRC_Z3, "limit", ["a/zarr.json"],
           "state/a/zarr.json declares shape [1000000000000, 1000000000000] (chunk shape unchanged).")
  p = os.path.join(d, "state", "a", "zarr.json")
  z = json.loads(rd(p))
  z["shape"] = [10 ** 12, 10 ** 12]
  z["chunk_grid"]["configuration"]["chunk_shape"] = [16, 16]
  for c in z["codecs"]:
    if c["name"] == "sharding_indexed":
      c["configuration"]["chunk_shape"] = [16, 16]
  wr(p, json.dumps(z, separators=(",", ":"), sort_keys=True).encode())

  d = case("limit_btree_num_entries", SRC_OCDBT, "limit", ["d/"],
           "The root B+tree node is replaced (new data file state/d/ffff..., raw envelope, valid CRC, "
           "manifest re-encoded to point at it) by a leaf whose num_entries varint is 2^31 (limit is 1048576; the node has no entry data).")
  db, m = manifest_info(os.path.join(d, "state"))
  node = raw_envelope(od.BTREE_NODE_MAGIC, bytes([0]) + od.put_varint(0) + od.put_varint(1 << 31))
  rel = b"d/" + b"f" * 32
  wr(os.path.join(d, "state", rel.decode()), node)

  def point_to_new(versions):
    versions[-1]["root"] = ((b"", rel), 0, len(node))
  wr(os.path.join(d, "state", "manifest.ocdbt"), encode_manifest_from(m, version_hook=point_to_new))

  d = case("limit_manifest_length_field", SRC_OCDBT, "limit", ["manifest.ocdbt"],
           "state/manifest.ocdbt (raw re-encoding) whose u64 length field says 2^60; CRC recomputed over "
           "the modified bytes.")
  body = manifest_body(os.path.join(d, "state"))
  wr(os.path.join(d, "state", "manifest.ocdbt"),
     raw_envelope(od.MANIFEST_MAGIC, body, length_override=1 << 60))

  # ---------------------------------------------------------------- unsafe_path
  def rename_param(d, old, new_key):
    p = os.path.join(d, "state", "_METADATA")
    md = json.loads(rd(p))
    tm = {}
    for k, v in md["tree_metadata"].items():
      if [x["key"] for x in v["key_metadata"]] == [old]:
        v["key_metadata"] = [{"key": new_key, "key_type": 2}]
        k = repr((new_key,))
      tm[k] = v
    md["tree_metadata"] = tm
    wr(p, json.dumps(md).encode())

  d = case("unsafe_param_dotdot", SRC_Z3, "unsafe_path", ["../../etc"],
           "Non-OCDBT zarr3: _METADATA renames leaf 'a' to the dict key '../../etc' (param name "
           "'../../etc' would resolve outside the item directory).")
  rename_param(d, "a", "../../etc")

  d = case("unsafe_param_embedded_dotdot", SRC_Z2, "unsafe_path", ["a/../../x"],
           "Non-OCDBT zarr2: _METADATA renames leaf 'a' to the dict key 'a/../../x'.")
  rename_param(d, "a", "a/../../x")

  d = case("unsafe_data_file_dotdot", SRC_OCDBT, "unsafe_path", [".."],
           "state/manifest.ocdbt (raw, valid CRC) whose data-file table names the root node file "
           "as base_path '../../' + 'd/<hex>'.")
  _, m = manifest_info(os.path.join(d, "state"))
  wr(os.path.join(d, "state", "manifest.ocdbt"),
     encode_manifest_from(m, files_map=lambda f: (b"../../", f[1])))

  d = case("unsafe_data_file_absolute", SRC_OCDBT, "unsafe_path", ["/etc/"],
           "state/manifest.ocdbt (raw, valid CRC) whose data-file table names the root node file "
           "'/etc/d/<hex>' (absolute path).")
  _, m = manifest_info(os.path.join(d, "state"))
  wr(os.path.join(d, "state", "manifest.ocdbt"),
     encode_manifest_from(m, files_map=lambda f: (b"/etc/", f[1])))

  # ---------------------------------------------------------------- uncommitted
  case("uncommitted_tmp", SRC_Z3, "uncommitted", [".orbax-checkpoint-tmp"],
       "A complete checkpoint left under a temporary name ending '.orbax-checkpoint-tmp' "
       "(rename never happened).", dest_name="ckpt.orbax-checkpoint-tmp")
  case("uncommitted_tmp_counter", SRC_Z3, "uncommitted", [".orbax-checkpoint-tmp"],
       "A complete checkpoint under an older-style temporary name '<name>.orbax-checkpoint-tmp-1234'.",
       dest_name="ckpt.orbax-checkpoint-tmp-1234")
  d = case("uncommitted_partial_save", SRC_Z3, "uncommitted", ["partial_save"],
           "A checkpoint under a '<name>.partial_save' directory (in-progress partial save), without "
           "commit_success.txt.", dest_name="ckpt.partial_save")
  os.remove(os.path.join(d, "commit_success.txt"))

  CASES.sort(key=lambda c: c["name"])
  fixlib.write_json(os.path.join(BAD, "cases.json"), CASES)
  print("%d bad cases" % len(CASES))


if __name__ == "__main__":
  main()
