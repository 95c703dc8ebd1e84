"""tools/torch_matrix.py: the README's generated section and the feature grouping."""

from __future__ import annotations

import os

from tests.helpers import ROOT, load_script


def _tool():
    return load_script("tools/torch_matrix.py")


def test_embed_in_readme_replaces_only_the_marked_section():
    tm = _tool()
    readme = f"# Title\n\nintro\n{tm.README_BEGIN}\nold table\n{tm.README_END}\nafter\n"
    out = tm.embed_in_readme(readme, "# Which nexfort feature works on which torch\n\n| a | b |\n|---|---|\n")
    assert out == f"# Title\n\nintro\n{tm.README_BEGIN}\n| a | b |\n|---|---|\n{tm.README_END}\nafter\n"
    assert tm.embed_in_readme(out, "# T\n\n| c |\n").count("| c |") == 1  # idempotent: no growth
    assert tm.embed_in_readme("# no markers\n", "# T\n\n| a |\n") is None


def test_the_project_readme_has_the_markers():
    tm = _tool()
    with open(os.path.join(ROOT, "README.md")) as f:
        assert tm.embed_in_readme(f.read(), "# T\n\n| a |\n") is not None


def test_feature_grouping_first_match_wins():
    tm = _tool()
    assert tm.feature_of("tests/diffusers/test_masks.py::test_x").startswith("Diffusers: any resolution")
    assert tm.feature_of("tests/diffusers/test_compile_pipe.py::test_x") == "Diffusers pipelines (`compile_pipe`)"
    assert tm.feature_of("tests/somewhere/else.py::test_x") == tm.OTHER


def test_skip_reasons_lose_the_machines_paths():
    tm = _tool()
    text = "cannot import name 'X' from 'diffusers' (/home/ci/repo/.nox/t/lib/python3.11/site-packages/diffusers/a.py)"
    assert tm._local_paths(text) == "cannot import name 'X' from 'diffusers' (site-packages/diffusers/a.py)"
