#!/usr/bin/env python3
"""2-process Orbax save (jax.distributed on localhost, CPU, gloo collectives).

  python make_multiprocess.py            # parent: spawns 2 workers, then writes expected/
  python make_multiprocess.py worker I PORT DIR   # (internal)

Produces fixtures/<v>_v1_two_process/ with state/ocdbt.process_0/ and
state/ocdbt.process_1/ and a merged top-level DB referencing both.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def tree_np():
  import numpy as np
  return {
      "x": (np.arange(8 * 300, dtype=np.float32).reshape(8, 300) / 3),
      "rep": np.arange(5, dtype=np.int32) * 7,
      "host_np": np.arange(6, dtype=np.int16).reshape(2, 3),
      "s": "two processes",
      "n": 9,
  }


def worker(pid, port, path):
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception:  # pylint: disable=broad-except
    pass
  jax.distributed.initialize(coordinator_address="127.0.0.1:%d" % port, num_processes=2,
                             process_id=pid)
  import numpy as np
  import orbax.checkpoint.experimental.v1 as ocp
  t = tree_np()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
  NS, P = jax.sharding.NamedSharding, jax.sharding.PartitionSpec

  def put(a, spec):
    sh = NS(mesh, spec)
    return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])
  tree = {"x": put(t["x"], P("x", None)), "rep": put(t["rep"], P()),
          "host_np": t["host_np"], "s": t["s"], "n": t["n"]}
  (ocp.save if hasattr(ocp, "save") else ocp.save_pytree)(path, tree)
  jax.distributed.shutdown()


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    return
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  import fixlib
  from importlib.metadata import version
  ver = version("orbax-checkpoint")
  name = "v" + ver.replace(".", "_") + "_v1_two_process"
  path = os.path.join(fixlib.FIXTURES, name)
  shutil.rmtree(path, ignore_errors=True)
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
  s.close()
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", str(i), str(port), path],
                            env=env) for i in range(2)]
  deadline = time.time() + 300
  for p in procs:
    try:
      p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      sys.exit("2-process save timed out")
  if any(p.returncode for p in procs):
    sys.exit("2-process save failed: %s" % [p.returncode for p in procs])
  item = "state" if os.path.isdir(os.path.join(path, "state")) else "pytree"
  item_dir = os.path.join(path, item)
  leaves = fixlib.pytree_leaves(item_dir, tree_np())
  problems = []
  fixlib.check_on_disk(item_dir, leaves, problems)
  fixlib.write_expected(name, [(item, "pytree", leaves)])
  procs_dirs = sorted(x for x in os.listdir(item_dir) if x.startswith("ocdbt.process_"))
  idx = fixlib.Index(ver)
  idx.add(name, "v1", name, "checkpoint",
          ["ocdbt", "zarr3", "multi_process", "base_path", "sharding", "out_of_line"],
          ("Saved by 2 JAX CPU processes (jax.distributed on localhost, 1 device each, gloo): "
           "x float32 (8,300) sharded P('x', None) (one shard per process), rep int32 (5,) replicated, "
           "a numpy array, a string and an int. Per-process DBs: %s; the merged state/ DB references "
           "both. %s" % (", ".join(procs_dirs), "; ".join(problems))).strip())
  # keep the other entries of this version
  import json
  old = json.load(open(fixlib.INDEX_PATH)) if os.path.exists(fixlib.INDEX_PATH) else []
  old = [e for e in old if e["name"] != name] + idx.entries
  old.sort(key=lambda e: e["name"])
  fixlib.write_json(fixlib.INDEX_PATH, old)
  print("wrote", name, procs_dirs, problems or "ok")


if __name__ == "__main__":
  main()
