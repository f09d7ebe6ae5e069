"""Writes tests/data/cast_cases.json: what numpy + ml_dtypes `astype` give
for float64 values cast to each small float type and bfloat16 / float16,
so the Rust casts are checked against the real library.

Run with the 0.12.8 venv: conformance/.venvs/0.12.8/bin/python make_cast_cases.py
"""
import json
import os

import ml_dtypes
import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "cast_cases.json")
TARGETS = ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
           "float8_e4m3b11fnuz", "float8_e8m0fnu", "float8_e3m4", "float4_e2m1fn"]


def main():
  rng = np.random.default_rng(20261128)
  values = [0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, 1e-9, -1e-9, 3.0, 448.0, 464.0, 480.0, 57344.0, 61440.0,
            1e6, -1e6, 6.0, 7.0, 0.25, 0.75, 1.0625, 1.1875, 65504.0, 65520.0]
  values += list(rng.normal(0, 4, 300)) + list(rng.normal(0, 300, 100)) + list(2.0 ** rng.integers(-20, 20, 60))
  values = [float(v) for v in values]
  cases = {}
  for name in TARGETS:
    dtype = np.dtype(getattr(ml_dtypes, name, None) or name)
    with np.errstate(all="ignore"):
      arr = np.array(values, dtype=np.float64).astype(dtype)
    width = np.uint16 if dtype.itemsize == 2 else np.uint8
    cases[name] = [int(b) for b in arr.view(width)]
  with open(OUT, "w") as f:
    json.dump({"values": values, "bits": cases}, f)
  print(f"wrote {len(values)} values x {len(TARGETS)} dtypes to {os.path.normpath(OUT)}")


if __name__ == "__main__":
  main()
