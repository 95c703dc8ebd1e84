"""tools/results_table.py: the README's measured table is generated from the committed benchmark files."""

from __future__ import annotations

import json

from tests.helpers import load_script


def _tool():
    return load_script("tools/results_table.py")


def test_readme_tables_match_the_result_files():
    """README.md and benchmarks/results/README.md both carry the table generated from the committed files."""
    tool = _tool()
    assert len(tool.TARGETS) == 2
    assert tool.main(["--check"]) == 0, "run python tools/results_table.py"
    for path in tool.TARGETS:
        with open(path) as f:
            assert tool.render() in f.read(), path


def test_row_ratios_and_unfair_runs(tmp_path):
    rt = _tool()
    data = {"args": {"dtype": "fp16"}, "env": {"gpu": "G", "torch": "t"},
            "runs": {"eager": {"step_ms_median": 40.0, "peak_memory_mb": 100.0},
                     "inductor": {"step_ms_median": 32.0},
                     "inductor:reduce-overhead": {"step_ms_median": 30.0},
                     "nexfort": {"step_ms_median": 25.0, "peak_memory_mb": 90.0, "rel_l2_vs_eager": 2e-3}}}
    (tmp_path / "a.json").write_text(json.dumps(data))
    r = rt.row("X", "a.json", data)
    assert (r["vs eager"], r["vs torch.compile"], r["vs its best mode"]) == ("1.60x", "1.28x", "1.20x")
    assert r["peak memory vs eager"] == "0.90x" and r["rel L2 vs eager"] == "2.0e-03"
    rt.UNFAIR_RUNS.add(("a.json", "inductor:reduce-overhead"))
    r = rt.row("X", "a.json", data)
    assert r["torch.compile `reduce-overhead`"] == "—" and r["vs its best mode"] == "—"
    table = rt.render([("X", "a.json")], str(tmp_path))
    assert "| X, fp16 |" in table and table.startswith("Measured on G, torch t")
    readme = f"a\n{rt.BEGIN}\nold\n{rt.END}\nb\n"
    once = rt.embed(readme, table)
    assert rt.embed(once, table) == once and "old" not in once


def test_quant_row_names_the_mode_torchao_and_torch_compiles_drift(tmp_path):
    rt = _tool()
    runs = {"eager": {"step_ms_median": 40.0, "peak_memory_mb": 100.0},
            "inductor": {"step_ms_median": 30.0, "rel_l2_vs_eager": 2e-3},
            "nexfort": {"step_ms_median": 20.0, "peak_memory_mb": 50.0, "rel_l2_vs_eager": 2e-2,
                        "nexfort_mode": "max-optimize:quant"}}
    data = {"args": {"dtype": "bf16"}, "env": {"gpu": "G", "torch": "t"}, "runs": dict(runs)}
    r = rt.quant_row("X", "q.json", data)
    assert r["nexfort"] == "20.00 ms (`max-optimize:quant`)" and r["vs torch.compile"] == "1.50x"
    assert r["torchao + torch.compile"] == "not run" and r["vs torchao"] == "—"
    assert r["rel L2 vs eager (torch.compile's)"] == "2.0e-02 (2.0e-03)" and r["peak memory vs eager"] == "0.50x"
    data["runs"]["torchao:fp8"] = {"step_ms_median": 25.0}
    r = rt.quant_row("X", "q.json", data)
    assert r["torchao + torch.compile"] == "25.00 ms" and r["vs torchao"] == "1.25x"
    data["runs"]["torchao:fp8"] = {"error": "TimeoutError"}
    assert rt.quant_row("X", "q.json", data)["torchao + torch.compile"] == "failed"
    (tmp_path / "q.json").write_text(json.dumps(data))
    assert "no FlashAttention-4" in rt.render([("X", "q.json")], str(tmp_path), make_row=rt.quant_row)


def test_a_rows_note_is_printed_under_the_table(tmp_path):
    rt = _tool()
    data = {"args": {"dtype": "bf16"}, "env": {"gpu": "G", "torch": "t"},
            "runs": {"eager": {"step_ms_median": 40.0}, "inductor": {"step_ms_median": 32.0},
                     "nexfort": {"step_ms_median": 25.0}}}
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "b.json").write_text(json.dumps(data))
    rt.NOTES["a.json"] = "the kernel did not reach this model"
    table = rt.render([("X", "a.json"), ("Y", "b.json")], str(tmp_path))
    assert table.rstrip().endswith("- `a.json`: the kernel did not reach this model")
    assert "b.json`:" not in table and table.count("the kernel did not") == 1
