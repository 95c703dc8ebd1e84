"""The plugin boundary (issue 20): plugins import nothing of nexfort-core but ``nexfort.core.api`` and no other
plugin; core imports no plugin and names none in its code. Read off the sources (an AST scan), so that a new import
anywhere, even inside a function, fails here."""

from __future__ import annotations

import ast
import os
from typing import Iterator, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE_SRC = os.path.join(ROOT, "packages", "nexfort-core", "src")
#: nexfort-core's top-level packages, and the one module of them a plugin may import
CORE_PACKAGES = ("nexfort.core", "nexfort.compilers", "nexfort.config", "nexfort.utils")
API = "nexfort.core.api"
#: each plugin: its package (what it may import of itself) and its source directory
PLUGINS = {
    "nexfort.passes": os.path.join(ROOT, "packages", "nexfort-passes", "src", "nexfort", "passes"),
    "nexfort.cache": os.path.join(ROOT, "packages", "nexfort-cache", "src", "nexfort", "cache"),
    "nexfort.diffusers": os.path.join(ROOT, "packages", "nexfort-diffusers", "src", "nexfort", "diffusers"),
    "nexfort_example_plugin": os.path.join(ROOT, "tests", "plugins", "nexfort-example-plugin", "src",
                                           "nexfort_example_plugin"),
}
PLUGIN_NAMES = ("nexfort-passes", "nexfort-cache", "nexfort-diffusers", "nexfort.passes", "nexfort.cache",
                "nexfort.diffusers", "nexfort_example_plugin")


def _sources(top: str) -> Iterator[str]:
    for d, _, files in os.walk(top):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(d, f)


def _module_name(path: str, src_root: str) -> str:
    rel = os.path.relpath(path, src_root)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def imports(source: str, module: str, is_package: bool) -> List[Tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (of the module ``module``), at any depth;
    ``from a import b`` counts as ``a.b`` (``b`` may be a module), relative imports are made absolute."""
    found: List[Tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
    return sorted(found)


def violations(source: str, module: str, is_package: bool, own: str) -> List[str]:
    """What a plugin module (of the package ``own``) imports that it must not."""
    bad = []
    for line, name in imports(source, module, is_package):
        if name == API or name.startswith(API + "."):
            continue
        if name == own or name.startswith(own + "."):
            continue
        if any(name == p or name.startswith(p + ".") for p in CORE_PACKAGES):
            bad.append(f"{module}:{line} imports {name} (of nexfort-core only {API} is for plugins)")
        elif any(name == p or name.startswith(p + ".") for p in PLUGINS if p != own):
            bad.append(f"{module}:{line} imports {name} (another plugin: go through a hook or {API})")
        elif name == "nexfort" or name.startswith("nexfort."):
            if name.split(".")[:2] != own.split(".")[:2]:
                bad.append(f"{module}:{line} imports {name}")
    return bad


def _scan(package: str, top: str) -> List[str]:
    src_root = os.path.dirname(top) if "." not in package else os.path.dirname(os.path.dirname(top))
    bad = []
    for path in _sources(top):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        bad += violations(source, _module_name(path, src_root), path.endswith("__init__.py"), package)
    return bad


@pytest.mark.parametrize("package", sorted(PLUGINS))
def test_plugin_imports_only_the_api_of_core(package):
    top = PLUGINS[package]
    assert any(True for _ in _sources(top)), f"no sources under {top}"
    assert _scan(package, top) == []


def test_the_scan_sees_every_kind_of_import():
    """The scan itself: each way of reaching past the boundary is found (else the tests above prove nothing)."""
    src = "\n".join([
        "from nexfort.core import api, hookimpl",  # hookimpl: not the api module
        "from nexfort.core.api import GraphPass",  # fine
        "import nexfort.core.config",
        "def f():",
        "    from nexfort.passes import quant",  # another plugin, inside a function
        "    from nexfort.compilers import prepare_module",
        "from . import fused",  # its own package: fine
        "from .. import core",  # nexfort.core, relatively
    ])
    bad = violations(src, "nexfort.diffusers.quant", False, "nexfort.diffusers")
    assert [b.split(" imports ")[1].split(" ")[0] for b in bad] == [
        "nexfort.core.hookimpl", "nexfort.core.config", "nexfort.passes.quant", "nexfort.compilers.prepare_module",
        "nexfort.core"]
    assert violations("from nexfort.core import api\nfrom nexfort.cache.key import digest\n",
                      "nexfort.cache.plugin", False, "nexfort.cache") == []


def _code_strings(source: str) -> Iterator[Tuple[int, str]]:
    """String constants of ``source`` that are not docstrings."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_core_imports_no_plugin_and_names_none_in_its_code():
    bad = []
    for path in _sources(os.path.join(CORE_SRC, "nexfort")):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        module = _module_name(path, CORE_SRC)
        for line, name in imports(source, module, path.endswith("__init__.py")):
            if any(name == p or name.startswith(p + ".") for p in PLUGINS):
                bad.append(f"{module}:{line} imports {name}")
        for line, text in _code_strings(source):
            named = [p for p in PLUGIN_NAMES if p in text]
            if named:
                bad.append(f"{module}:{line} names {named[0]} in {text[:80]!r}")
    assert bad == []
