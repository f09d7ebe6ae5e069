"""Writes conformance/targets/: checkpoints for the scenarios of Orbax's
"Working with PyTree Checkpoints" guide that load with a target (metadata as
target, cast, placeholders, partial_load, pad/truncate, shape mismatch), and
expected.json with what real Orbax returns for each (values, dtypes, shapes,
error texts). tests/targets.rs checks orbax-rs against it.

Run with the 0.12.8 venv and 8 CPU devices:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    conformance/.venvs/0.12.8/bin/python conformance/generate/make_targets.py
"""
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp_v0
import orbax.checkpoint.experimental.v1 as ocp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "targets")


def leaf_json(x):
  if x is ...:
    return "PLACEHOLDER"
  x = np.asarray(x)
  return {"dtype": str(x.dtype), "shape": list(x.shape), "values": x.astype(np.float64).ravel().tolist()}


def tree_json(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is ...)
  return {jax.tree_util.keystr(k): leaf_json(v) for k, v in flat}


def outcome(fn):
  """{"error": text} if fn raises, else {"tree": tree_json(result)}."""
  try:
    return {"tree": tree_json(fn())}
  except BaseException as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {e}"}


def main():
  assert len(jax.devices()) == 8, "set XLA_FLAGS=--xla_force_host_platform_device_count=8"
  shutil.rmtree(OUT, ignore_errors=True)
  os.makedirs(OUT)
  expected = {"orbax_version": ocp_v0.__version__ if hasattr(ocp_v0, "__version__") else "0.12.8"}

  # The guide's pytree: two 16-element arrays sharded 8-way on dim 0.
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("model",)), jax.sharding.PartitionSpec("model"))
  pytree = {"a": np.arange(16), "b": np.linspace(-3.75, 3.75, 16).astype(np.float32)}
  pytree = jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), pytree)
  abstract = jax.tree_util.tree_map(ocp_v0.utils.to_shape_dtype_struct, pytree)
  guide = os.path.join(OUT, "guide")
  ocp.save_pytree(guide, pytree)

  metadata = ocp.pytree_metadata(guide).metadata
  expected["metadata_as_target"] = tree_json(ocp.load_pytree(guide, metadata))
  cast = jax.tree_util.tree_map(lambda x: x.update(dtype=np.int16), abstract)
  expected["cast_int16"] = tree_json(ocp.load_pytree(guide, cast))
  cast_bf16 = jax.tree_util.tree_map(lambda x: x.update(dtype=jax.numpy.bfloat16), abstract)
  expected["cast_bfloat16"] = tree_json(ocp.load_pytree(guide, cast_bf16))
  # More casts, each a numpy astype on the host after reading (serialization._read_shard).
  expected["casts"] = {}
  for name in ["float16", "int8", "bool", "complex64", "float8_e4m3fn", "float8_e5m2"]:
    dtype = jax.numpy.dtype(name)
    target = jax.tree_util.tree_map(lambda x, d=dtype: x.update(dtype=d), abstract)
    expected["casts"][name] = tree_json(ocp.load_pytree(guide, target))
  different = {
      "a": jax.ShapeDtypeStruct(shape=(8,), dtype=abstract["a"].dtype, sharding=abstract["a"].sharding),
      "b": jax.ShapeDtypeStruct(shape=(32,), dtype=abstract["b"].dtype, sharding=abstract["b"].sharding),
  }
  expected["shape_mismatch"] = outcome(lambda: ocp.load_pytree(guide, different))
  with ocp.Context(array_options=ocp.options.ArrayOptions(
      loading=ocp.options.ArrayOptions.Loading(enable_padding_and_truncation=True))):
    expected["pad_truncate"] = tree_json(ocp.load_pytree(guide, different))

  # The guide's partial-loading tree.
  item = {
      "params": {"layer1": {"kernel": np.arange(8), "bias": np.arange(8) + 10},
                 "layer2": {"kernel": np.arange(8) + 20, "bias": np.arange(8) + 30}},
      "opt_state": [np.arange(8) + 40, np.arange(8) + 50],
      "step": 101,
  }
  partial = os.path.join(OUT, "partial")
  ocp.save_pytree(partial, item)
  reference = {
      "params": {"layer1": {"kernel": ..., "bias": ...}, "layer2": {"kernel": np.arange(8), "bias": np.arange(8)}},
      "opt_state": [..., ...],
      "step": 101,
  }
  expected["placeholder"] = tree_json(ocp.load_pytree(partial, reference))
  subset = {"params": {"layer2": {"kernel": np.zeros(8, np.int64)}}, "step": 0}
  with ocp.Context(pytree_options=ocp.options.PyTreeOptions(loading=ocp.options.PyTreeOptions.Loading(partial_load=True))):
    expected["partial_load"] = tree_json(ocp.load_pytree(partial, subset))
    missing = {"params": {"layer2": {"kernel": np.zeros(8, np.int64), "gamma": np.zeros(8, np.int64)}}}
    expected["partial_load_missing"] = outcome(lambda: ocp.load_pytree(partial, missing))
  expected["subset_without_partial_load"] = outcome(lambda: ocp.load_pytree(partial, subset))
  extra = dict(item, extra=7)
  expected["extra_key"] = outcome(lambda: ocp.load_pytree(partial, extra))

  with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")
  print(json.dumps(expected, indent=1)[:6000])


if __name__ == "__main__":
  main()
