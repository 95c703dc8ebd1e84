"""Turn the test sessions' JUnit XML into the torch feature matrix: which nexfort feature works on which torch.

    nox -s tests-torch21 tests-torch22 tests-torch23 tests-torch24 tests   # each writes build/junit/<session>.xml
    nox -s torch-matrix                                                   # = the command below
    python tools/torch_matrix.py build/junit/*.xml \\
        --json benchmarks/results/torch-matrix.json --md docs/torch-matrix.md

Each XML file is one session (its name: the file's stem, e.g. ``tests-torch22``); the torch/Python/diffusers
versions come from the test-suite properties that ``tests/conftest.py`` records, the date from pytest's
timestamp. Tests are grouped into features by :data:`FEATURES` (first match on the test id wins). A feature's cell
says how its tests ended on that torch: all passed, some skipped (with the skip reasons, which name the torch
feature that is missing), or failed (with the failing tests).

The JSON keeps the last result of every session: running the tool on some sessions' XML updates those and keeps
the others, and the Markdown table is always rendered from the whole JSON. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Dict, List, Optional, Tuple

#: (feature, regular expression searched in the test id "tests/dir/test_x.py::test_name[param]"); first match wins.
FEATURES: List[Tuple[str, str]] = [
    ("Dynamic shapes (`dynamic=True`)", r"tests/(core|passes)/.*::test_\w*dynamic"),
    ("Backend flag overrides (`overrides.*`)", r"tests/core/test_backend\.py::test_\w*overrides"),
    ("Backend: PixArt/UNet compiled through Inductor (CPU)", r"tests/core/test_backend(_gpu)?\.py::"),
    ("Mode strings and configuration", r"tests/core/test_config\.py::"),
    ("Cache-safe post-grad passes (changed pass = cache miss)", r"tests/core/test_plugins\.py::test_changed_pass"),
    ("Plugins and third-party graph passes", r"tests/core/test_plugins\.py::"),
    ("Attention pass (decomposed attention -> SDPA)", r"tests/passes/test_attention\.py::"),
    ("GELU into the GEMM epilogue (linear_gelu pass)", r"tests/passes/test_linear_gelu(_matcher)?\.py::"),
    ("Attention kernel chosen per shape (attention_kernel pass)", r"tests/passes/test_attention_kernel\.py::"),
    ("Flux q/k RMSNorm + rotary embedding in one op (qk_norm_rope pass)", r"tests/passes/test_qk_norm_rope\.py::"),
    ("A linear over a concatenation as one GEMM per part (cat_linear pass)", r"tests/passes/test_cat_linear\.py::"),
    ("int8 GEMM with its rescale in the epilogue (`quant.gemm_kernel`: int8_scaled_mm)",
     r"tests/passes/test_quant_int8_gemm\.py::"),
    ("Quantization (`quant`, `quantize_`, `quantize_pipe`: fp8 linears)",
     r"tests/(passes/test_quant|diffusers/test_quantize_pipe)\.py::"),
    ("Compiled-artifact cache: warm autotuning (Triton kernels, torch fixes)",
     r"tests/(cache/test_triton_kernels|core/test_compat_autotune)\.py::"),
    ("Compiled-artifact cache (portable bundle, 2nd process)", r"tests/cache/test_plugin\.py::"),
    ("Redis cache store", r"tests/cache/test_redis\.py::"),
    ("Signed local cache store and keys", r"tests/cache/test_(store|key)\.py::"),
    ("Cache CLI", r"tests/cache/test_cli\.py::"),
    ("Diffusers: any resolution/batch without recompiling", r"tests/diffusers/test_(dynamic|masks)\.py::"),
    ("Diffusers: LoRA", r"tests/diffusers/test_lora\.py::"),
    ("Diffusers: regional compilation (repeated blocks)", r"tests/diffusers/test_regional\.py::"),
    ("Diffusers: several processes (`parallelize_pipe`, gloo ranks on the CPU)",
     r"tests/(diffusers/test_parallel|benchmarks/test_parallel_benchmark)\.py::"),
    ("Diffusers pipelines (`compile_pipe`)", r"tests/diffusers/"),
    ("Benchmark script", r"tests/benchmarks/"),
    ("Inductor cache cleaner", r"tests/utils/"),
]
#: Tests skipped for want of a GPU are counted here, whatever their module (the sessions run on the CPU).
GPU = "GPU (CUDA) tests"
GPU_SKIP = re.compile(r"CUDA GPU|cuda", re.IGNORECASE)
OTHER = "Other tests"


def feature_of(test_id: str) -> str:
    for name, pattern in FEATURES:
        if re.search(pattern, test_id):
            return name
    return OTHER


def _test_id(case: ET.Element) -> str:
    """``tests/core/test_backend.py::test_x[param]`` from a JUnit ``testcase`` (classname ``tests.core.test_x``)."""
    classname, name = case.get("classname", ""), case.get("name", "")
    if not classname and name.startswith("tests."):  # a module skipped at collection: name is the module
        return name.replace(".", "/") + ".py::"
    parts = classname.split(".")
    # a test class inside the module: "tests.core.test_x.TestY" -> module path + "::TestY"
    for i in range(len(parts), 0, -1):
        if parts[i - 1].startswith("test_"):
            path = "/".join(parts[:i]) + ".py"
            rest = parts[i:]
            return "::".join([path, *rest, name])
    return f"{classname}::{name}"


def _skip_reason(el: ET.Element) -> str:
    msg = el.get("message") or (el.text or "")
    if msg == "collection skipped":  # the reason is in the text: "('path', line, 'Skipped: reason')"
        m = re.search(r"Skipped: (.*?)['\"]\)\s*$", el.text or "")
        msg = m.group(1) if m else msg
    msg = re.sub(r"^(Skipped|skipped):\s*", "", msg.strip())
    return _local_paths(msg.splitlines()[0])[:300] if msg else "skipped"


def _local_paths(text: str) -> str:
    """``text`` without the machine's own paths: ``.../site-packages/x`` -> ``site-packages/x`` (an ImportError's
    message names the installed file)."""
    return re.sub(r"/\S*?/site-packages/", "site-packages/", text)


def read_session(path: str) -> Dict:
    """One session's summary from its JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    props: Dict[str, str] = {}
    timestamp: Optional[str] = None
    duration = 0.0
    features: Dict[str, Dict] = {}
    counts = {"passed": 0, "skipped": 0, "failed": 0, "errors": 0, "xfailed": 0}
    dirs: set = set()
    for suite in suites:
        timestamp = timestamp or suite.get("timestamp")
        duration += float(suite.get("time") or 0)
        for p in suite.iter("property"):
            props[p.get("name", "")] = p.get("value", "")
        for case in suite.iter("testcase"):
            tid = _test_id(case)
            dirs.add("/".join(tid.split("::")[0].split("/")[:2]))
            failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
            gpu_skip = skipped is not None and bool(GPU_SKIP.search(_skip_reason(skipped)))
            feat = features.setdefault(GPU if gpu_skip else feature_of(tid),
                                       {"passed": 0, "skipped": 0, "failed": 0, "skip_reasons": {}, "failed_tests": []})
            if failure is not None or error is not None:
                bad = failure if failure is not None else error
                counts["failed" if failure is not None else "errors"] += 1
                feat["failed"] += 1
                msg = (bad.get("message") or "").strip().splitlines()
                feat["failed_tests"].append(tid + (f": {_local_paths(msg[0])[:200]}" if msg else ""))
            elif skipped is not None:
                if skipped.get("type") == "pytest.xfail":
                    counts["xfailed"] += 1
                    feat["passed"] += 1
                    continue
                counts["skipped"] += 1
                feat["skipped"] += 1
                reason = _skip_reason(skipped)
                feat["skip_reasons"][reason] = feat["skip_reasons"].get(reason, 0) + 1
            else:
                counts["passed"] += 1
                feat["passed"] += 1
    date = None
    if timestamp:
        try:
            date = datetime.fromisoformat(timestamp).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            date = timestamp
    return {
        "date": date,
        "torch": props.get("torch"),
        "python": props.get("python"),
        "diffusers": props.get("diffusers"),
        "transformers": props.get("transformers"),
        **counts,
        "duration_s": round(duration, 1),
        "test_dirs": sorted(dirs),
        "junit": os.path.relpath(path),
        "features": features,
    }


def _version_key(v: Optional[str]) -> Tuple:
    # sorting only (a tool, not the library): "2.2.2+cu121" -> (2, 2, 2)
    nums = re.findall(r"\d+", (v or "").split("+")[0])
    return tuple(int(n) for n in nums[:3]) or (999,)


def _cell(feat: Optional[Dict], notes: Dict[str, int]) -> str:
    if feat is None:
        return "—"

    def note(reason: str) -> str:
        if reason not in notes:
            notes[reason] = len(notes) + 1
        return f"[{notes[reason]}]"

    p, s, f = feat["passed"], feat["skipped"], feat["failed"]
    if f:
        return f"❌ {f} failed / {p + s + f}"
    refs = "".join(note(r) for r in sorted(feat["skip_reasons"]))
    if s and not p:
        return f"⏭️ skipped {refs}"
    if s:
        return f"✅ {p} passed, {s} skipped {refs}"
    return f"✅ {p} passed"


def render_markdown(results: Dict) -> str:
    sessions = sorted(results["sessions"].items(), key=lambda kv: _version_key(kv[1].get("torch")))
    names = [s for s, _ in sessions]
    order = [f for f, _ in FEATURES] + [OTHER, GPU]
    present = [f for f in order if any(f in r["features"] for _, r in sessions)]
    notes: Dict[str, int] = {}
    lines = [
        "# Which nexfort feature works on which torch",
        "",
        "Generated by `tools/torch_matrix.py` from the JUnit XML of the test sessions (`nox -s tests-torch21` "
        "... `tests-torch24`, `nox -s tests`; then `nox -s torch-matrix`), not written by hand. "
        "All sessions run on the CPU (Python 3.11); GPU tests skip there. "
        "The numbers per session are in `benchmarks/results/torch-matrix.json`.",
        "",
        "| feature | " + " | ".join(f"torch {r.get('torch') or '?'} (`{s}`)" for s, r in sessions) + " |",
        "|---|" + "---|" * len(sessions),
    ]
    for feat in present:
        cells = [_cell(r["features"].get(feat), notes) for _, r in sessions]
        lines.append(f"| {feat} | " + " | ".join(cells) + " |")
    lines.append("| **all tests** (passed / skipped / failed) | " + " | ".join(
        f"{r['passed']} / {r['skipped']} / {r['failed'] + r['errors']}" for _, r in sessions) + " |")
    lines.append("| run on (UTC) | " + " | ".join(str(r.get("date") or "?") for _, r in sessions) + " |")
    all_dirs = sorted({d for _, r in sessions for d in r.get("test_dirs", [])})
    if any(sorted(r.get("test_dirs", [])) != all_dirs for _, r in sessions):
        lines.append("| test directories run | " + " | ".join(
            "all" if sorted(r.get("test_dirs", [])) == all_dirs else ", ".join(r.get("test_dirs", []))
            for _, r in sessions) + " |")
    lines.append("| diffusers / transformers | " + " | ".join(
        f"{r.get('diffusers') or '?'} / {r.get('transformers') or '?'}" for _, r in sessions) + " |")
    if notes:
        lines += ["", "Skip reasons:", ""]
        for reason, n in sorted(notes.items(), key=lambda kv: kv[1]):
            lines.append(f"{n}. {reason}")
    failed = [(s, t) for s, r in sessions for f in r["features"].values() for t in f["failed_tests"]]
    if failed:
        lines += ["", "Failing tests:", ""]
        lines += [f"- `{s}`: {t}" for s, t in failed]
    missing = [s for s in ("tests-torch21", "tests-torch22", "tests-torch23", "tests-torch24", "tests")
               if s not in names]
    if missing:
        lines += ["", "No results recorded yet for: " + ", ".join(f"`{s}`" for s in missing) + "."]
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- torch-matrix:begin (generated by tools/torch_matrix.py; do not edit) -->"
README_END = "<!-- torch-matrix:end -->"


def embed_in_readme(readme: str, table_md: str) -> Optional[str]:
    """``readme`` with the feature table (``table_md`` without its title) between the README's markers;
    ``None`` when the README has no markers (it is then left alone)."""
    start, end = readme.find(README_BEGIN), readme.find(README_END)
    if start < 0 or end < start:
        return None
    body = table_md.split("\n", 2)[2].strip() if table_md.startswith("# ") else table_md.strip()
    return readme[:start + len(README_BEGIN)] + "\n" + body + "\n" + readme[end:]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("junit", nargs="*", help="JUnit XML files, one per session, named <session>.xml")
    ap.add_argument("--json", default="benchmarks/results/torch-matrix.json",
                    help="results file to update (default: %(default)s)")
    ap.add_argument("--md", default="docs/torch-matrix.md", help="Markdown table to write (default: %(default)s)")
    ap.add_argument("--readme", default="README.md", help="README whose marked section gets the table too "
                    "(default: %(default)s; left alone without the markers)")
    ap.add_argument("--replace", action="store_true", help="drop the sessions recorded before")
    args = ap.parse_args(argv)

    results: Dict = {"sessions": {}}
    if os.path.exists(args.json) and not args.replace:
        with open(args.json) as f:
            results = json.load(f)
        results.setdefault("sessions", {})
    for path in args.junit:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            results["sessions"][name] = read_session(path)
        except ET.ParseError as e:
            print(f"torch_matrix: {path}: not a JUnit XML file ({e})", file=sys.stderr)
            return 2
    if not results["sessions"]:
        print("torch_matrix: no results (pass the sessions' JUnit XML files)", file=sys.stderr)
        return 2
    results["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    results["sessions"] = dict(sorted(results["sessions"].items(),
                                      key=lambda kv: _version_key(kv[1].get("torch"))))
    table = render_markdown(results)
    outputs = [(args.json, json.dumps(results, indent=2, sort_keys=False) + "\n"), (args.md, table)]
    if args.readme and os.path.exists(args.readme):
        with open(args.readme) as f:
            readme = embed_in_readme(f.read(), table)
        if readme is not None:
            outputs.append((args.readme, readme))
    for path, text in outputs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    for name, r in results["sessions"].items():
        print(f"{name:16s} torch {r.get('torch')}: {r['passed']} passed, {r['skipped']} skipped, "
              f"{r['failed'] + r['errors']} failed ({r.get('date')})")
    print("wrote " + ", ".join(path for path, _ in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
