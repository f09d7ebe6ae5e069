"""Summarizes bench/out/results.jsonl: median seconds per (impl, tree, op),
throughput, peak RSS above the data, and our speed-up over Orbax."""
import collections
import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
groups = collections.defaultdict(list)
for r in rows:
  impl, tree = r["impl"].split(":")
  groups[(tree, r["op"], impl)].append(r)

print(f"{'tree':<12}{'op':<10}{'impl':<17}{'median s':>10}{'MiB/s':>9}{'extra RSS MiB':>15}{'extra/data':>11}")
medians = {}
for (tree, op, impl), rs in sorted(groups.items()):
  t = statistics.median(r["seconds"] for r in rs)
  data = rs[0]["data_bytes"]
  extra = statistics.median(r["peak_rss_bytes"] - r["base_rss_bytes"] for r in rs)
  if op == "load":
    extra -= data  # the loaded tree itself is not overhead
  medians[(tree, op, impl)] = t
  thr = f"{data / t / 2**20:9.0f}" if op != "metadata" else f"{'-':>9}"
  ratio = f"{extra / data:11.1%}" if op != "metadata" and data else f"{'-':>11}"
  print(f"{tree:<12}{op:<10}{impl:<17}{t:10.3f}{thr}{extra / 2**20:15.0f}{ratio}")
print()
for (tree, op, impl), t in sorted(medians.items()):
  if impl == "ours" and (tree, op, "orbax") in medians:
    print(f"{tree} {op}: ours is {medians[(tree, op, 'orbax')] / t:.2f}x Orbax")
