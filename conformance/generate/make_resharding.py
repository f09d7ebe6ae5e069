"""Resharding fixtures: arrays saved by real Orbax 8-way sharded on dim 0,
then restored by Orbax onto a 2x4 mesh; records Orbax's own per-device
slices (device id, index domain, values) as the expected output.

Run with the pinned venv (8 virtual CPU devices are forced below):
  conformance/.venvs/0.12.8/bin/python conformance/generate/make_resharding.py
Writes conformance/fixtures/v0_12_8_v1_resharding_{ocdbt,files}/ and
conformance/expected/v0_12_8_v1_resharding.json.
"""
import importlib.metadata
import json
import os
import shutil

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402
import orbax.checkpoint.experimental.v1 as ocp  # noqa: E402

CONF = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small inner chunks so one device's region needs only some of them.
CHUNK_BYTE_SIZE = 16

devices = np.array(jax.devices())
mesh8 = Mesh(devices.reshape(8), ("d",))
mesh24 = Mesh(devices.reshape(2, 4), ("x", "y"))

w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 4
b = np.arange(32, dtype=np.int32) * 3 - 40
tree = {
    "w": jax.device_put(jnp.asarray(w), NamedSharding(mesh8, P("d"))),
    "b": jax.device_put(jnp.asarray(b), NamedSharding(mesh8, P("d"))),
}
# The target layouts on the 2x4 mesh.
targets = {
    "w": NamedSharding(mesh24, P("x", "y")),
    "b": NamedSharding(mesh24, P(("x", "y"))),
}


def save(name, use_ocdbt):
  path = os.path.join(CONF, "fixtures", name)
  shutil.rmtree(path, ignore_errors=True)
  saving = ocp.options.ArrayOptions.Saving(
      use_ocdbt=use_ocdbt, use_zarr3=True,
      storage_options=ocp.options.ArrayOptions.Saving.StorageOptions(chunk_byte_size=CHUNK_BYTE_SIZE))
  with ocp.Context(array_options=ocp.options.ArrayOptions(saving=saving)):
    ocp.save_pytree(path, tree)
  abstract = {k: jax.ShapeDtypeStruct(tree[k].shape, tree[k].dtype, sharding=targets[k]) for k in tree}
  restored = ocp.load_pytree(path, abstract)
  out = {}
  for k, arr in restored.items():
    assert arr.sharding == targets[k], arr.sharding
    out[k] = {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "mesh_shape": [2, 4],
        "axis_names": ["x", "y"],
        "partition_spec": [list(e) if isinstance(e, tuple) else e for e in targets[k].spec],
        "shards": [
            {"device": s.device.id,
             "index": [[sl.start or 0, arr.shape[d] if sl.stop is None else sl.stop]
                       for d, sl in enumerate(s.index)],
             "data": np.asarray(s.data).ravel().tolist()}
            for s in sorted(arr.addressable_shards, key=lambda s: s.device.id)
        ],
    }
  return out


expected = {
    "orbax_version": importlib.metadata.version("orbax-checkpoint"),
    "ocdbt": save("v0_12_8_v1_resharding_ocdbt", True),
    "files": save("v0_12_8_v1_resharding_files", False),
}
assert expected["ocdbt"] == expected["files"]
with open(os.path.join(CONF, "expected", "v0_12_8_v1_resharding.json"), "w") as f:
  json.dump(expected, f, indent=1, sort_keys=True)
  f.write("\n")
