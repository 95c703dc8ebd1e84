"""nexfort.cache.triton_kernels: Triton kernels compiled after a graph compiled travel with its entry and land,
usable, in another process's Triton cache (on a fake Triton cache: the CPU has no Triton kernels to compile)."""

from __future__ import annotations

import json
import os
import time

import pytest

from nexfort.cache import bundle, triton_kernels

HASH_OLD = "A" * 52
HASH_NEW = "B2" * 26


def _kernel_dir(root, name, kernel="triton_poi_fused_0", mtime=None):
    """A Triton cache directory as Triton 3.x writes it: the kernel's files and a group file naming them."""
    d = root / name
    d.mkdir(parents=True)
    group = {}
    for ext, data in (("cubin", os.urandom(64)), ("json", b'{"name": "k"}'), ("ptx", b".version 8.0")):
        (d / f"{kernel}.{ext}").write_bytes(data)
        group[f"{kernel}.{ext}"] = str(d / f"{kernel}.{ext}")
    (d / f"__grp__{kernel}.json").write_text(json.dumps({"child_paths": group}))
    if mtime is not None:
        for f in d.iterdir():
            os.utime(f, (mtime, mtime))
    return d


def test_new_kernel_directories_round_trip_into_another_cache(tmp_path):
    here, there = tmp_path / "triton-cold", tmp_path / "triton-warm"
    _kernel_dir(here, HASH_OLD, mtime=time.time() - 3600)  # compiled with the graph: in torch's own bundle
    src = _kernel_dir(here, HASH_NEW)
    files = triton_kernels.files_since(str(here), time.time() - 60, limit=100)
    assert sorted(files) == sorted(f"triton/{HASH_NEW}/{f.name}" for f in src.iterdir())
    assert str(here).encode() not in files[f"triton/{HASH_NEW}/__grp__triton_poi_fused_0.json"]

    torch_bytes, shipped = bundle.unpack(bundle.pack(b"torch", files))  # the bundle accepts these paths
    assert shipped == files
    assert triton_kernels.install(str(there), shipped) == [HASH_NEW]
    out = there / HASH_NEW
    for f in src.iterdir():
        if not f.name.startswith("__grp__"):
            assert (out / f.name).read_bytes() == f.read_bytes()
    paths = json.loads((out / "__grp__triton_poi_fused_0.json").read_text())["child_paths"]
    assert paths == {n: str(out / n) for n in ("triton_poi_fused_0.cubin", "triton_poi_fused_0.json",
                                               "triton_poi_fused_0.ptx")}
    assert all(os.path.exists(p) for p in paths.values())
    assert not [p for p in there.iterdir() if p.name.startswith("tmp.")]
    # a second install leaves the existing directory alone
    (out / "triton_poi_fused_0.cubin").write_bytes(b"local")
    assert triton_kernels.install(str(there), shipped) == []
    assert (out / "triton_poi_fused_0.cubin").read_bytes() == b"local"


def test_real_triton_finds_the_installed_kernel(tmp_path, monkeypatch):
    cache = pytest.importorskip("triton.runtime.cache", reason="needs Triton (GPU builds of torch ship it)")
    _kernel_dir(tmp_path / "cold", HASH_NEW)
    files = triton_kernels.files_since(str(tmp_path / "cold"), time.time() - 60, limit=100)
    triton_kernels.install(str(tmp_path / "warm"), files)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "warm"))
    group = cache.FileCacheManager(HASH_NEW).get_group("triton_poi_fused_0.json")
    assert group is not None and sorted(group) == ["triton_poi_fused_0.cubin", "triton_poi_fused_0.json",
                                                   "triton_poi_fused_0.ptx"]


def test_directories_triton_could_not_use_are_not_shipped_or_installed(tmp_path):
    here = tmp_path / "cold"
    d = _kernel_dir(here, HASH_NEW)
    grp = d / "__grp__triton_poi_fused_0.json"
    grp.write_text(json.dumps({"child_paths": {"x.cubin": "/somewhere/else/x.cubin"}}))  # names a foreign file
    assert triton_kernels.files_since(str(here), time.time() - 60, limit=100) == {}
    (here / "tmp.pid_1_2").mkdir()  # Triton's own temporary directories and odd names are not kernels
    (here / "not-a-hash").mkdir()
    assert triton_kernels.files_since(str(here), time.time() - 60, limit=100) == {}
    assert triton_kernels.files_since(str(tmp_path / "missing"), 0, limit=100) == {}

    good = triton_kernels.files_since(str(_kernel_dir(tmp_path / "b", HASH_NEW).parent), time.time() - 60, 100)
    forged = dict(good)
    forged[f"triton/{HASH_NEW}/__grp__triton_poi_fused_0.json"] = json.dumps(
        {"child_paths": {"a": f"{triton_kernels.PLACEHOLDER}/not-shipped.cubin"}}).encode()
    assert triton_kernels.install(str(tmp_path / "warm"), forged) == []
    no_group = {k: v for k, v in good.items() if "__grp__" not in k}
    assert triton_kernels.install(str(tmp_path / "warm"), no_group) == []
    assert not (tmp_path / "warm" / HASH_NEW).exists()
    assert triton_kernels.install(None, good) == []  # no Triton cache in this process: nothing written
    assert triton_kernels.files_since(str(tmp_path / "b"), time.time() - 60, limit=2) == {}  # over the limit


@pytest.mark.parametrize("path", ["triton/../../etc/passwd", f"triton/{HASH_NEW}/../x", f"triton/{HASH_NEW}/.x",
                                  "triton/short/x.cubin", f"/triton/{HASH_NEW}/x"])
def test_bundle_rejects_paths_outside_the_triton_layout(path):
    with pytest.raises(bundle.BundleError, match="unexpected path"):
        bundle.unpack(bundle.pack(b"", {path: b"x"}))
