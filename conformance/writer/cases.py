"""The writer-conformance matrix: trees and save options.

Each case is saved twice by real Orbax 0.12.8: `input/<case>` with default
options (what our writer starts from, after our reader loads it) and
`orbax/<case>` with the case's options (the reference our output must match).
"""
import ml_dtypes
import numpy as np

ALL_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
              "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz",
              "float8_e8m0fnu", "float8_e3m4", "float4_e2m1fn", "int4", "int2"]


def dtype(name):
  return np.dtype(getattr(ml_dtypes, name, None) or name)


def values(name, shape, seed):
  rng = np.random.default_rng(seed)
  d = dtype(name)
  n = int(np.prod(shape)) if shape else 1
  if name == "bool":
    a = rng.integers(0, 2, n).astype(bool)
  elif name in ("int4", "int2"):
    lo, hi = (-8, 8) if name == "int4" else (-2, 2)
    a = rng.integers(lo, hi, n).astype(np.int8).astype(d)
  elif d.kind in "iu":
    info = np.iinfo(d)
    a = rng.integers(max(info.min, -1000), min(info.max, 1000), n, endpoint=True).astype(d)
  elif d.kind == "c":
    a = (rng.normal(size=n) + 1j * rng.normal(size=n)).astype(d)
  elif name == "float8_e8m0fnu":
    a = (2.0 ** rng.integers(-10, 10, n)).astype(np.float32).astype(d)
  else:
    a = rng.normal(0, 2, n).astype(np.float32).astype(d)
  return a.reshape(shape)


def sharded_tree():
  """jax.Arrays over a 4x2 mesh of 8 virtual CPU devices (needs XLA_FLAGS set
  before jax is imported, as make_inputs.py and check.py do)."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))
  put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
  return {
      "x_only": put(values("float32", (8, 4), 30), P("x", None)),
      "xy": put(values("int32", (16, 8), 31), P("x", "y")),
      "y_only": put(values("bfloat16", (6, 4), 32), P(None, "y")),
      "replicated": put(values("float32", (6,), 33), P()),
      "single": jax.device_put(values("int16", (5,), 34), SingleDeviceSharding(jax.devices()[3])),
      "host": values("float64", (3,), 35),
  }


def checkpointables():
  """name -> (items, options): multi-item checkpoints (two PyTrees and a JSON item)."""
  base = {"use_ocdbt": True, "use_zarr3": True, "use_compression": True, "chunk_byte_size": None, "storage_dtype": None}
  items = {
      "params": {"w": values("float32", (2, 3), 40), "b": values("bfloat16", (3,), 41)},
      "opt": [values("int32", (3,), 42), {"mu": values("float64", (2,), 43)}],
      "config": {"lr": 0.001, "name": "run \u2713", "layers": [64, 32], "flags": {"a": True, "b": False},
                 "empty_o": {}, "empty_a": [], "nothing": None, "neg": -3},
  }
  return {"multi_item": (items, dict(base)), "multi_item_zarr2": (items, {**base, "use_zarr3": False})}


JSON_ITEMS = ("config",)


def trees():
  """name -> (tree, options). options: use_ocdbt, use_zarr3, use_compression, chunk_byte_size, storage_dtype."""
  base = {"use_ocdbt": True, "use_zarr3": True, "use_compression": True, "chunk_byte_size": None, "storage_dtype": None}
  mixed = {
      "params": {"w": values("float32", (4, 8), 1), "b": values("bfloat16", (8,), 2)},
      "opt": [values("int32", (3,), 3), {"mu": values("float16", (2, 2), 4)}],
      "step": 101, "lr": 0.001, "flag": True, "name": "run-\u2713", "none": None,
      "empty_d": {}, "empty_l": [], "nan": float("nan"), "big": 2 ** 60,
  }
  cases = {}
  for layout, opts in {
      "ocdbt_zarr3": {}, "ocdbt_zarr2": {"use_zarr3": False}, "files_zarr3": {"use_ocdbt": False},
      "files_zarr2": {"use_ocdbt": False, "use_zarr3": False}, "ocdbt_raw": {"use_compression": False},
      "files_zarr2_raw": {"use_ocdbt": False, "use_zarr3": False, "use_compression": False},
  }.items():
    cases[f"mixed_{layout}"] = (mixed, {**base, **opts})
  cases["dtypes"] = ({n: values(n, (2, 3), i) for i, n in enumerate(ALL_DTYPES)}, dict(base))
  cases["dtypes_zarr2"] = ({n: values(n, (2, 3), i) for i, n in enumerate(ALL_DTYPES)}, {**base, "use_zarr3": False})
  cases["ranks"] = ({f"r{r}": values("float32", (2, 3, 1, 2, 2)[:r], r) for r in range(6)}, dict(base))
  cases["chunked"] = ({"big": values("float32", (32, 64), 7), "odd": values("int32", (10, 13), 8),
                       "small": values("int8", (4,), 9)}, {**base, "chunk_byte_size": 512})
  cases["chunked_files_zarr2"] = ({"big": values("float32", (32, 64), 7)},
                                  {**base, "chunk_byte_size": 1024, "use_ocdbt": False, "use_zarr3": False})
  cases["cast_bf16"] = ({"w": values("float32", (4, 4), 10), "i": values("int32", (5,), 11)},
                        {**base, "storage_dtype": "bfloat16"})
  cases["cast_int16"] = ({"w": values("float32", (4, 4), 12), "i": values("int64", (5,), 13)},
                         {**base, "storage_dtype": "int16"})
  cases["odd_keys"] = ({"": values("int8", (2,), 14), "..": values("int8", (2,), 15), "a//b": values("int8", (2,), 16),
                        "dots.in.key": values("int8", (2,), 17), "\u043a\u043b\u044e\u0447": values("int8", (2,), 18),
                        "it's": values("int8", (2,), 19), 'q"uote': values("int8", (2,), 20)}, dict(base))
  cases["sharded8"] = (sharded_tree(), dict(base))
  cases["sharded8_files_zarr2"] = (sharded_tree(), {**base, "use_ocdbt": False, "use_zarr3": False})
  cases["nested"] = ({"a": [{"b": (values("int16", (2,), 21), [values("uint8", (1,), 22)])}], "c": {"d": {"e": "s"}}},
                     dict(base))
  return cases
