"""``python3 -m nexfort.utils.clear_inductor_cache``: remove Inductor's, Triton's and nexfort's on-disk caches
and say what was removed."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import List


def cache_dirs() -> List[str]:
    from nexfort.core.compat import inductor_cache_dir
    from nexfort.core.plugins import get_plugin_manager

    dirs = [inductor_cache_dir()]
    triton = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    dirs.append(triton)
    for result in get_plugin_manager().hook.nexfort_cache_dirs():
        dirs.extend(result or ())
    seen, out = set(), []
    for d in dirs:
        d = os.path.abspath(d)
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m nexfort.utils.clear_inductor_cache", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    args = parser.parse_args(argv)
    removed = 0
    for d in cache_dirs():
        if not os.path.isdir(d):
            print(f"absent   {d}")
            continue
        size = _size(d)
        if args.dry_run:
            print(f"would remove {d} ({size / 2**20:.1f} MiB)")
            continue
        shutil.rmtree(d, ignore_errors=True)
        print(f"removed  {d} ({size / 2**20:.1f} MiB)")
        removed += size
    if not args.dry_run:
        print(f"total    {removed / 2**20:.1f} MiB removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
