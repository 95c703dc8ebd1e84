"""Each run of the benchmark JSON files ``$OUT/PREFIX*.json``: median ms, rel L2 vs eager, warm-up s, pass counters.

    python3 benchmarks/gpu/plan/counters.py PREFIX [--dir DIR]   (DIR: default $OUT, else benchmarks/out)
"""
import argparse
import glob
import json
import os


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prefix")
    p.add_argument("--dir", default=os.environ.get("OUT", "benchmarks/out"))
    args = p.parse_args(argv)
    rows = []
    for f in sorted(glob.glob(os.path.join(args.dir, args.prefix + "*.json"))):
        for name, r in json.load(open(f))["runs"].items():
            c = {k: v for k, v in (r.get("nexfort_counters") or {}).items() if k != "facts"}
            rows.append((os.path.basename(f), name, r.get("step_ms_median"), r.get("rel_l2_vs_eager"),
                         r.get("warmup_s"), c))
            print(*rows[-1][1:5], json.dumps(c)[:500])
    return rows


if __name__ == "__main__":
    main()
