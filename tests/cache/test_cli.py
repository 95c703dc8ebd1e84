"""``python -m nexfort.cache``: stats, list, clear, prune, export, import."""

from __future__ import annotations

import subprocess
import tarfile
import warnings

import pytest

from nexfort.cache.cli import main
from nexfort.cache.local import LocalStore

from .conftest import FLEET_SECRET, PYTHON, child_env


@pytest.fixture
def filled(cache_env):
    store = LocalStore()
    for i in range(3):
        store.put(f"key{i}", bytes([i]) * (1000 * (i + 1)))
    return store


def test_stats_and_list(filled, capsys):
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "entries: 3" in out and str(filled.root) in out and "limit:" in out
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == ["key0", "key1", "key2"]
    sizes = {line.split("\t")[0]: int(line.split("\t")[1]) for line in lines}
    assert sizes["key2"] > sizes["key1"] > sizes["key0"]


def test_clear(filled, capsys):
    assert main(["clear"]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    assert filled.entries() == []
    assert (filled.root and LocalStore().secret == filled.secret)  # the directory key survives a clear


def test_prune(filled, capsys):
    import os

    for t, k in zip((100, 200, 300), ("key2", "key0", "key1")):
        os.utime(filled.path(k), (t, t))
    assert main(["prune", "--max-size", "2.5K"]) == 0
    assert "evicted" in capsys.readouterr().out
    assert [e.key for e in filled.entries()] == ["key1"]  # the most recently used one that fits
    assert main(["prune", "--max-size", "nonsense"]) == 2


def test_export_import_with_shared_secret(filled, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEXFORT_CACHE_SECRET", FLEET_SECRET)
    src = LocalStore(str(tmp_path / "src"))
    src.put("warm", b"compiled artifacts")
    archive = tmp_path / "warm.tar.gz"
    assert main(["--dir", str(tmp_path / "src"), "export", str(archive)]) == 0
    assert "exported 1 entries" in capsys.readouterr().out
    assert main(["--dir", str(tmp_path / "dst"), "import", str(archive)]) == 0
    assert "imported 1 entries" in capsys.readouterr().out
    assert LocalStore(str(tmp_path / "dst")).get("warm") == b"compiled artifacts"


def test_import_verifies_signatures(tmp_path, monkeypatch, capsys):
    src = LocalStore(str(tmp_path / "src"))  # its own random directory key
    src.put("warm", b"compiled artifacts")
    archive = tmp_path / "warm.tar.gz"
    assert main(["--dir", str(tmp_path / "src"), "export", str(archive)]) == 0
    # a tampered archive, and one signed with another key: nothing is imported
    with tarfile.open(archive) as tar:
        (member,) = tar.getmembers()
        blob = bytearray(tar.extractfile(member).read())
    blob[-1] ^= 0xFF
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        import io

        member.size = len(blob)
        tar.addfile(member, io.BytesIO(bytes(blob)))
    for path, dst in ((archive, "other-dir"), (tampered, "src")):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            rc = main(["--dir", str(tmp_path / dst), "import", str(path)])
        assert rc == 1 and any("failed verification" in line for line in capsys.readouterr().out.splitlines())
        assert any("bad signature" in str(w.message) for w in record)
    assert LocalStore(str(tmp_path / "other-dir")).get("warm") is None


def test_export_skips_bad_entries(filled, tmp_path, capsys):
    path = filled.path("key1")
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert main(["export", str(tmp_path / "a.tar.gz")]) == 0
    assert "exported 2 entries" in capsys.readouterr().out


def test_module_entry_point(filled):
    proc = subprocess.run([PYTHON, "-m", "nexfort.cache", "--dir", str(filled.root), "stats"],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "entries: 3" in proc.stdout
