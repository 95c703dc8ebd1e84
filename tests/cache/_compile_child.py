"""Run in a subprocess by the tests: compile a tiny model with cache-all, print what the caches did as JSON."""

from __future__ import annotations

import json
import sys
import time
import warnings


def main() -> None:
    t0 = time.perf_counter()
    import torch
    from torch._dynamo.utils import counters as torch_counters

    from nexfort.core import counters

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compiled = torch.compile(model, backend="nexfort", options={"mode": "cache-all"})
        with torch.no_grad():
            t1 = time.perf_counter()
            out = compiled(x)
            t2 = time.perf_counter()
            ref = model(x)
    print(json.dumps({
        "cache": dict(counters["cache"]),
        "backend": dict(counters["backend"]),
        "inductor": dict(torch_counters["inductor"]),
        "aot_autograd": dict(torch_counters["aot_autograd"]),
        "max_abs_diff": float((out - ref).abs().max()),
        "warnings": [str(w.message) for w in record if "nexfort" in str(w.message)],
        "first_call_s": t2 - t1,
        "process_s": t2 - t0,
    }))


if __name__ == "__main__":
    sys.exit(main())
