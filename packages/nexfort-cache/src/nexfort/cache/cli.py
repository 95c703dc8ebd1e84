"""``python -m nexfort.cache``: inspect and manage nexfort's compiled-artifact cache.

Commands: ``stats``, ``list``, ``clear``, ``prune --max-size SIZE``, ``export FILE``, ``import FILE``.
The store is the local directory (``--dir``, else ``$NEXFORT_CACHE_DIR``, else ``~/.cache/nexfort``), or, with
``--redis URL`` / ``$NEXFORT_CACHE_REDIS_URL``, Redis with the local directory in front.

``export`` writes a gzipped tar of the entries that verify, signed with ``$NEXFORT_CACHE_SECRET`` (else the
directory's own key); ``import`` verifies every entry of such an archive before storing it, and skips (with a
warning) any that does not. To ship a warmed cache with a container image, use the same
``NEXFORT_CACHE_SECRET`` when exporting and importing (or copy the whole cache directory, key included).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
from typing import Any, List, Optional

from nexfort.cache.store import (
    BadSignature,
    InvalidEntry,
    env_secret,
    format_size,
    parse_size,
    read_envelope,
    seal,
    warn_once,
)

ARCHIVE_PREFIX = "nexfort-cache/"


def open_store(directory: Optional[str] = None, redis_url: Optional[str] = None) -> Any:
    from nexfort.cache.local import LocalStore, default_dir
    from nexfort.cache.redis import redis_url as env_redis_url

    url = redis_url or env_redis_url()
    if url:
        from nexfort.cache.redis import RedisStore, TieredStore

        return TieredStore(LocalStore(directory or default_dir()), RedisStore(url))
    return LocalStore(directory or default_dir())


def secret_for(store: Any) -> bytes:
    secret = env_secret() or getattr(store, "secret", None) or getattr(getattr(store, "remote", None), "secret", None)
    if not secret:
        raise ValueError("no signing key: set NEXFORT_CACHE_SECRET")
    return secret


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_stats(store: Any, args: argparse.Namespace) -> int:
    entries = store.entries()
    total = sum(e.size for e in entries)
    print(f"store:   {store.describe()}")
    print(f"entries: {len(entries)}")
    print(f"size:    {format_size(total)} ({total} bytes)")
    limit = getattr(store, "max_size", None) or getattr(getattr(store, "local", None), "max_size", None)
    if limit:
        print(f"limit:   {format_size(limit)} (NEXFORT_CACHE_MAX_SIZE)")
    if entries:
        print(f"oldest access: {_when(min(e.atime for e in entries))}")
        print(f"newest access: {_when(max(e.atime for e in entries))}")
    return 0


def cmd_list(store: Any, args: argparse.Namespace) -> int:
    for e in sorted(store.entries(), key=lambda e: e.atime, reverse=True):
        print(f"{e.key}\t{e.size}\t{_when(e.atime)}")
    return 0


def cmd_clear(store: Any, args: argparse.Namespace) -> int:
    print(f"removed {store.clear()} entries from {store.describe()}")
    return 0


def cmd_prune(store: Any, args: argparse.Namespace) -> int:
    limit = parse_size(args.max_size)
    evicted = store.prune(limit)
    print(f"evicted {len(evicted)} least recently used entries; {format_size(store.total_size())} left "
          f"(limit {format_size(limit)})")
    return 0


def cmd_export(store: Any, args: argparse.Namespace) -> int:
    secret = secret_for(store)
    n = 0
    with tarfile.open(args.file, "w:gz") as tar:
        for e in store.entries():
            payload = store.get(e.key)  # verified, or None (and warned) when the entry is bad
            if payload is None:
                continue
            blob = seal(e.key, payload, secret)
            info = tarfile.TarInfo(f"{ARCHIVE_PREFIX}{n:06d}.nxc")
            info.size, info.mtime, info.mode = len(blob), int(e.atime), 0o644
            tar.addfile(info, io.BytesIO(blob))
            n += 1
    print(f"exported {n} entries to {args.file}")
    return 0


def cmd_import(store: Any, args: argparse.Namespace) -> int:
    secret = secret_for(store)
    limit = store.local.entry_limit() if hasattr(store, "local") else store.entry_limit()
    imported = skipped = failed = 0
    with tarfile.open(args.file, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(ARCHIVE_PREFIX):
                continue
            try:  # the size is checked before the member is read into memory; it is read (and verified) once
                f = tar.extractfile(member)
                if f is None:
                    continue
                key, payload = read_envelope(f, member.size, secret, limit=limit)
            except InvalidEntry as e:
                skipped += 1
                hint = (" Exporting and importing need the same NEXFORT_CACHE_SECRET."
                        if isinstance(e, BadSignature) else "")
                warn_once(f"import-{args.file}-{member.name}",
                          f"nexfort cache: {member.name} in {args.file} skipped: {e}.{hint}")
                continue
            if store.put(key, payload) is False:
                failed += 1
                continue
            imported += 1
    print(f"imported {imported} entries into {store.describe()}"
          + (f"; skipped {skipped} that failed verification" if skipped else "")
          + (f"; {failed} could not be stored" if failed else ""))
    return 1 if (skipped or failed) and not imported else 0


COMMANDS = {"stats": cmd_stats, "list": cmd_list, "clear": cmd_clear, "prune": cmd_prune, "export": cmd_export,
            "import": cmd_import}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nexfort.cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="the local cache directory (default: $NEXFORT_CACHE_DIR or ~/.cache/nexfort)")
    p.add_argument("--redis", metavar="URL", help="a shared Redis store (default: $NEXFORT_CACHE_REDIS_URL)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="number of entries, total size, size limit")
    sub.add_parser("list", help="every entry: key, size in bytes, last access (most recent first)")
    sub.add_parser("clear", help="remove every entry")
    prune = sub.add_parser("prune", help="evict least recently used entries down to a size")
    prune.add_argument("--max-size", required=True, help="e.g. 500M, 10G")
    exp = sub.add_parser("export", help="write the verified entries to a .tar.gz")
    exp.add_argument("file")
    imp = sub.add_parser("import", help="verify and add the entries of an exported .tar.gz")
    imp.add_argument("file")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = open_store(args.dir, args.redis)
        return COMMANDS[args.command](store, args)
    except Exception as e:  # noqa: BLE001 - a clear message, not a traceback
        from nexfort.cache.security import scrub

        message = scrub(scrub(str(e), args.redis), os.environ.get("NEXFORT_CACHE_REDIS_URL"))
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
