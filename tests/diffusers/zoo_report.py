"""``python tests/diffusers/zoo_report.py build/junit/zoo.xml [more.xml ...] [--out-dir benchmarks/results]
[--previous OLD.json]``: the zoo's JUnit XML (``nox -s zoo``; several files for a run made in chunks) as
``zoo_cpu_torch<major.minor>.json``: per class and entry point pass / fail / skip (with the message), the torch,
diffusers and Python versions, the date and the machine. ``--previous``: what the XML files lack is taken from an
earlier result file, each such entry marked with that file's date (a run that could not do everything again)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import xml.etree.ElementTree as ET


def read(xml_paths) -> dict:
    classes: dict = {}
    cases = [c for p in ([xml_paths] if isinstance(xml_paths, str) else xml_paths)
             for c in ET.parse(p).getroot().iter("testcase")]
    for case in cases:
        m = re.match(r"test_zoo\[(\w+)-(.+)\]$", case.get("name", ""))
        m = m or re.match(r"test_zoo_(skipped)\[(\w+)\]$", case.get("name", ""))
        if not m:
            continue
        name, entry = m.groups()
        if name == "skipped":
            name, entry = entry, "both"
        status, msg = "pass", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                status = "skip" if tag == "skipped" else "fail"
                msg = (el.get("message") or "").splitlines()[0][:300] if el.get("message") else tag
        classes.setdefault(name, {})[entry] = {"status": status, "seconds": round(float(case.get("time", 0)), 1),
                                               **({"message": msg} if msg else {})}
    return classes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("xml", nargs="+")
    ap.add_argument("--previous", default=None, help="an earlier zoo_cpu_*.json for what the XML files lack")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--note", default=None, help="how the run went (stopped early, a shared machine, ...)")
    args = ap.parse_args()
    import diffusers
    import torch

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from tests.diffusers import zoo_configs as zoo

    classes = read(args.xml)
    if args.previous:
        with open(args.previous) as f:
            prev = json.load(f)
        for name, entries in prev.get("classes", {}).items():
            for entry, r in entries.items():
                if r.get("status") in ("pass", "fail") and entry not in classes.get(name, {}):
                    classes.setdefault(name, {})[entry] = {**r, "from": f"the earlier run of {prev.get('date')}"}
    for name in zoo.CONFIGS:  # a run stopped early (its time limit): what it did not reach, said so
        for entry in ("torch.compile", "nexfort_compile"):
            classes.setdefault(name, {}).setdefault(entry, {"status": "not run", "message": "the run stopped first"})
    for name, reason in zoo.SKIPS.items():  # the reasoned skips (no config): from zoo_configs where not in the XML
        classes.setdefault(name, {"both": {"status": "skip", "message": reason}})
    classes = dict(sorted(classes.items()))
    counts: dict = {}
    for entries in classes.values():
        for r in entries.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    out = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.system()}",
           "mode": "max-optimize:max-autotune:low-precision", "dtype": "float32", "tolerance_rel_l2": 1e-4,
           "counts": counts, **({"note": args.note} if args.note else {}), "classes": classes}
    ver = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    path = os.path.join(args.out_dir, f"zoo_cpu_torch{ver}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"{path}: {counts}")


if __name__ == "__main__":
    main()
