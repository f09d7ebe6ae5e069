"""Saves every case of cases.py with real Orbax 0.12.8: OUT/input/<case>
(default options) and OUT/orbax/<case> (the case's options), and writes
OUT/cases.json with the options for the Rust side.

Usage: python make_inputs.py OUT
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
import numpy as np  # noqa: E402
import orbax.checkpoint.experimental.v1 as ocp  # noqa: E402

import cases as cases_lib  # noqa: E402


def context(opts):
  saving = ocp.options.ArrayOptions.Saving
  kwargs = {}
  if opts["storage_dtype"]:
    kwargs["dtype"] = cases_lib.dtype(opts["storage_dtype"])
  if opts["chunk_byte_size"]:
    kwargs["chunk_byte_size"] = opts["chunk_byte_size"]
  registry = ocp.handlers.local_registry()
  for name in cases_lib.JSON_ITEMS:
    registry.add(ocp.handlers.JsonHandler, checkpointable_name=name)
  return ocp.Context(
      array_options=ocp.options.ArrayOptions(saving=saving(
          use_ocdbt=opts["use_ocdbt"], use_zarr3=opts["use_zarr3"], use_compression=opts["use_compression"],
          storage_options=saving.StorageOptions(**kwargs))),
      checkpointables_options=ocp.options.CheckpointablesOptions(registry=registry))


def save(path, tree, opts):
  with context(opts):
    ocp.save_pytree(path, tree)


def main(out):
  default = {"use_ocdbt": True, "use_zarr3": True, "use_compression": True, "chunk_byte_size": None,
             "storage_dtype": None}
  index = []
  for name, (tree, opts) in cases_lib.trees().items():
    save(os.path.join(out, "input", name), tree, default)
    save(os.path.join(out, "orbax", name), tree, opts)
    index.append({"name": name, "options": opts, "items": ["state"]})
  for name, (items, opts) in cases_lib.checkpointables().items():
    for kind, o in (("input", default), ("orbax", opts)):
      with context(o):
        ocp.save_checkpointables(os.path.join(out, kind, name), items)
    index.append({"name": name, "options": opts, "items": list(items)})
  with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(index, f, indent=1)
  print(f"saved {len(index)} cases with orbax-checkpoint")


if __name__ == "__main__":
  main(sys.argv[1])
