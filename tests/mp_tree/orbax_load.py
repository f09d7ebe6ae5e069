"""Loads checkpoints with real Orbax (one process, 8 CPU devices) and prints,
as one JSON line, every leaf of each: {path: {keystr: {dtype, shape, values}}}.

  python orbax_load.py PATH...
"""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
import warnings  # pylint: disable=g-import-not-at-top

warnings.simplefilter("ignore")
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import orbax.checkpoint.experimental.v1 as ocp  # pylint: disable=g-import-not-at-top


def describe(value):
  if isinstance(value, str):
    return {"dtype": "str", "shape": [], "values": value}
  a = np.asarray(value)
  return {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist()}


out = {}
for path in sys.argv[1:]:
  tree = ocp.load_pytree(path)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  out[path] = {jax.tree_util.keystr(p): describe(v) for p, v in flat}
print(json.dumps(out))
