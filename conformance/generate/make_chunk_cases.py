"""Writes tests/data/chunk_shapes.json: Orbax's own choose_chunk_shape on a
deterministic set of (global shape, write shape, itemsize, byte limit,
shard axes) cases, so the Rust port is checked against the real function.

Run with the 0.12.8 venv: conformance/.venvs/0.12.8/bin/python make_chunk_cases.py
"""
import json
import os
import random

import numpy as np
from orbax.checkpoint._src.arrays import subchunking

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "chunk_shapes.json")


def main():
  rng = random.Random(20261128)
  dims = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 30, 64, 100, 128, 1000]
  dtypes = {1: np.int8, 2: np.float16, 4: np.float32, 8: np.float64}
  cases = []
  while len(cases) < 400:
    rank = rng.randint(1, 4)
    write = [rng.choice(dims) for _ in range(rank)]
    glob = [w * rng.choice([1, 1, 2, 4]) for w in write]
    itemsize = rng.choice(list(dtypes))
    target = rng.choice([8, 16, 64, 100, 1000, 4096, 10**5, 10**7])
    if target < itemsize:  # Orbax requires target >= itemsize (it loops forever otherwise)
      continue
    axes = sorted(rng.sample(range(rank), rng.randint(0, rank))) if rng.random() < 0.3 else []
    got = subchunking.choose_chunk_shape(
        tuple(glob), tuple(write), np.dtype(dtypes[itemsize]), target, shard_axes=tuple(axes))
    cases.append({"global_shape": glob, "write_shape": write, "itemsize": itemsize,
                  "target_bytes": target, "shard_axes": axes, "chunk_shape": [int(x) for x in got]})
  with open(OUT, "w") as f:
    json.dump(cases, f, indent=0)
  print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
  main()
