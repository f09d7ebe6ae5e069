# Writes and reads training roots with real Orbax for tests/training_orbax.rs.
# Usage: roots.py (write_manager|write_training|read_manager|read_training) ROOT
import sys, json, numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import v1
mode, root = sys.argv[1], sys.argv[2]
def tree(s):
  return {"w": np.arange(6, dtype=np.float32).reshape(2, 3) + s, "b": np.full((4,), s, dtype=np.int32)}
opts = dict(step_prefix="ckpt", step_format_fixed_length=4)
if mode == "write_manager":
  mgr = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(best_fn=lambda m: m["loss"], best_mode="min", **opts), metadata={"run": "orbax"})
  for s in (1, 2):
    mgr.save(s, args=ocp.args.StandardSave(tree(s)), metrics={"loss": 1.0 / s})
  mgr.wait_until_finished(); mgr.close()
elif mode == "write_training":
  with v1.training.Checkpointer(root, custom_metadata={"run": "orbax"}) as ck:
    for s in (0, 10):
      ck.save(s, tree(s), metrics={"loss": 1.0 / (s + 1)})
elif mode == "read_manager":
  mgr = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(best_fn=lambda m: m["loss"], best_mode="min", **opts))
  out = {"steps": mgr.all_steps(), "latest": mgr.latest_step(), "metadata": mgr.metadata().custom_metadata}
  for s in mgr.all_steps():
    r = mgr.restore(s, args=ocp.args.StandardRestore())
    ok = all(np.array_equal(np.asarray(r[k]), tree(s)[k]) for k in ("w", "b"))
    out[str(s)] = {"ok": bool(ok), "metrics": mgr.metrics(s)}
  print(json.dumps(out))
elif mode == "read_training":
  out = {}
  with v1.training.Checkpointer(root) as ck:
    out["steps"] = [c.step for c in ck.checkpoints]
    out["metadata"] = ck.root_metadata().custom_metadata
    for c in ck.checkpoints:
      r = ck.load(c.step)
      ok = all(np.array_equal(np.asarray(r[k]), tree(c.step)[k]) for k in ("w", "b"))
      out[str(c.step)] = {"ok": bool(ok), "metrics": c.metrics}
  print(json.dumps(out))
