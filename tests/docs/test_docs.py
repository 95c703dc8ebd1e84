"""The documentation stays in step with the code: every mode flag has its row in the README and its section in
docs/flags.md, the README's cells stay one line, links between the docs resolve, and nothing points outside the
repository."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def _anchor(heading):
    """GitHub's anchor of a markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-")


PROJECT_DISTRIBUTIONS = {"nexfort-core", "nexfort-passes", "nexfort-cache", "nexfort-diffusers"}


def _third_party_flags() -> set:
    """The flags declared by plugins of distributions other than the project's four."""
    from nexfort.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    dists = {id(plugin): dist.metadata["name"] for plugin, dist in pm.list_plugin_distinfo()}
    names = set()
    for impl in pm.hook.nexfort_mode_flags.get_hookimpls():
        dist = dists.get(id(impl.plugin))
        if dist is not None and dist not in PROJECT_DISTRIBUTIONS:
            names.update(flag.name for flag in impl.function() or ())
    return names


def test_every_flag_has_a_readme_row_and_a_flags_md_section(capsys):
    from nexfort.config.__main__ import main  # python -m nexfort.config --list-flags, in this process

    assert main(["--list-flags"]) == 0
    flags = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "max-optimize" in flags and "quant" in flags
    others = _third_party_flags()  # e.g. the example plugin's relu-floor (installed by nox): not the project's docs
    assert others <= set(flags)
    flags = [f for f in flags if f not in others]
    readme, flags_md = _read("README.md"), _read("docs/flags.md")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", flags_md, re.M)}
    rows = {}
    for line in readme.splitlines():
        m = re.match(r"^\| (`[^|]+`(?: / `[^|]+`)?) \| (.+) \|$", line)
        if m:
            rows.update({name: m.group(2) for name in re.findall(r"`([^`]+)`", m.group(1))})
    for flag in flags:
        assert flag in rows, f"README's flag table has no row for {flag}"
        links = re.findall(r"\(docs/flags\.md#([^)]+)\)", rows[flag])
        assert links and all(a in anchors for a in links), f"{flag}: its row must link a section of docs/flags.md"
        assert len(rows[flag]) <= 200, f"{flag}: README cells stay one line; details go to docs/flags.md"


def test_links_between_docs_resolve():
    for rel in ("README.md", "benchmarks/README.md", "docs/architecture.md", "docs/flags.md", "docs/patches.md"):
        text = _read(rel)
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(rel), target))
            assert os.path.exists(path), f"{rel} links {target}, which does not exist"


def test_nothing_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.sh", "*.toml", "*.yaml"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout (an sdist): nothing to check against
        return
    # the machine's own folders (its notes, its work tree and its library), spelled so that this file does not match
    outside = re.compile("|".join(re.escape(p) for p in ("../" + "shared", "/" + "work/", "." + "library/")))
    bad = [f for f in files if outside.search(_read(f))]
    assert bad == [], f"files that point outside the repository: {bad}"
