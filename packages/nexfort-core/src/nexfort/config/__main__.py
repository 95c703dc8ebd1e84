"""``python -m nexfort.config "max-optimize:max-autotune:low-precision" [--options JSON]``: print the resolved
configuration (YAML), the flags it turned on, the loaded plugins and the passes they would run."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nexfort.config", description=__doc__)
    parser.add_argument("mode", nargs="?", default="", help="colon-separated mode flags, e.g. max-optimize:jit")
    parser.add_argument("--options", default=None, help="JSON object of namespaced options")
    parser.add_argument("--config", default=None,
                        help="a whole compiler config as JSON (as the benchmark's --compiler-config)")
    parser.add_argument("--list-flags", action="store_true", help="list the mode flags and what they do")
    args = parser.parse_args(argv)

    from nexfort.core.config import (
        available_flags,
        flag_descriptions,
        parse_options,
        parse_spec,
        resolve_config,
        to_yaml,
    )
    from nexfort.core.errors import NexfortConfigError

    try:
        if args.list_flags:
            for flag, desc in flag_descriptions().items():
                print(f"{flag:24s} {desc}")
            return 0
        spec = parse_spec(args.config)  # what the command line gave, read once
        if args.mode:
            spec["mode"] = args.mode
        if args.options:
            spec["options"] = parse_options(args.options)
        cfg = resolve_config(spec)
    except NexfortConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from nexfort.core.backend import collect_passes
    from nexfort.core.plugins import plugin_names

    print(to_yaml(cfg), end="")
    print(f"# flags available: {', '.join(available_flags())}")
    print(f"# plugins: {', '.join(plugin_names()) or '(none)'}")
    try:
        passes = collect_passes(cfg)
        print(f"# passes: {', '.join(f'{p.name} ({p.stage})' for p in passes) or '(none)'}")
    except Exception as e:  # noqa: BLE001
        print(f"# passes: error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
