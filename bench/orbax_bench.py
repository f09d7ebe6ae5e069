"""Orbax side of bench/run.sh: makes the benchmark trees and times Orbax.

  orbax_bench.py make OUT_DIR            save the transformer-like tree and the 5000-leaf tree
  orbax_bench.py load PATH               time ocp.load_pytree (fresh process)
  orbax_bench.py save PATH OUT           load PATH, time ocp.save_pytree of it to OUT
  orbax_bench.py metadata PATH           time ocp.pytree_metadata

Prints one JSON line per measurement, like examples/bench.rs.
"""
import json
import os
import resource
import shutil
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint.experimental.v1 as ocp  # noqa: E402

LAYERS = 24
D_MODEL = 1024
D_FF = 4096


def rss_kib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field):
        return int(line.split()[1])
  return 0


def reset_peak():
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def transformer_tree():
  """1 GiB: 24 layers of attention (4 x d*d float32, 16 MiB) and gated MLP
  (3 x d*ff bfloat16, 24 MiB) plus norms, and a 64 MiB bfloat16 embedding."""
  rng = np.random.default_rng(0)
  def mat(shape, dtype):
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
  layers = []
  for _ in range(LAYERS):
    layers.append({
        "attn": {n: mat((D_MODEL, D_MODEL), np.float32) for n in ("q", "k", "v", "o")},
        "mlp": {"gate": mat((D_MODEL, D_FF), ml_dtypes.bfloat16), "up": mat((D_MODEL, D_FF), ml_dtypes.bfloat16),
                "down": mat((D_FF, D_MODEL), ml_dtypes.bfloat16)},
        "norm": mat((D_MODEL,), np.float32),
    })
  return {"embed": mat((32768, D_MODEL), ml_dtypes.bfloat16), "layers": layers}


def small_tree(n=5000):
  rng = np.random.default_rng(1)
  return {f"p{i:05d}": rng.standard_normal(16, dtype=np.float32) for i in range(n)}


def nbytes(tree):
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def report(op, seconds, data, base_kib):
  print(json.dumps({"op": op, "seconds": round(seconds, 4), "data_bytes": data,
                    "peak_rss_bytes": rss_kib("VmHWM:") * 1024, "base_rss_bytes": base_kib * 1024}), flush=True)


def main(argv):
  cmd = argv[1]
  if cmd == "make":
    out = argv[2]
    for name, tree in (("transformer", transformer_tree()), ("small5000", small_tree())):
      path = os.path.join(out, "orbax_" + name)
      shutil.rmtree(path, ignore_errors=True)
      ocp.save_pytree(path, tree)
      print(f"saved {path}: {nbytes(tree) / 2**20:.0f} MiB", file=sys.stderr)
  elif cmd == "load":
    reset_peak()
    base = rss_kib("VmRSS:")
    start = time.perf_counter()
    tree = ocp.load_pytree(argv[2])
    jax.block_until_ready(tree)
    report("load", time.perf_counter() - start, nbytes(tree), base)
  elif cmd == "save":
    tree = ocp.load_pytree(argv[2])
    tree = jax.tree.map(np.asarray, tree)
    shutil.rmtree(argv[3], ignore_errors=True)
    reset_peak()
    base = rss_kib("VmRSS:")
    start = time.perf_counter()
    ocp.save_pytree(argv[3], tree)
    report("save", time.perf_counter() - start, nbytes(tree), base)
  elif cmd == "metadata":
    start = time.perf_counter()
    meta = ocp.pytree_metadata(argv[2]).metadata
    report("metadata", time.perf_counter() - start, len(jax.tree.leaves(meta)), rss_kib("VmRSS:"))
  else:
    sys.exit(__doc__)


if __name__ == "__main__":
  main(sys.argv)
