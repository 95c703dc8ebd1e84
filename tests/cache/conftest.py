"""Fixtures of the nexfort-cache tests: a private cache directory and environment for every test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ENV_VARS = ("NEXFORT_CACHE_DIR", "NEXFORT_CACHE_SECRET", "NEXFORT_CACHE_REDIS_URL", "NEXFORT_GRAPH_CACHE",
            "NEXFORT_CACHE_MAX_ENTRY_SIZE", "NEXFORT_CACHE_REDIS_TIMEOUT_S", "NEXFORT_CACHE_REMOTE_RETRY_S",
            "NEXFORT_CACHE_MAX_SIZE")


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    """Every test gets its own cache directory, no secret, no Redis, and fresh per-process cache state."""
    from nexfort.cache import local, plugin, store
    from nexfort.cache import redis as redis_mod
    from nexfort.core import counters

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    cache_dir = tmp_path / "nexfort-cache"
    monkeypatch.setenv("NEXFORT_CACHE_DIR", str(cache_dir))
    local._stores.clear()
    redis_mod._stores.clear()
    store._warned.clear()
    plugin.reset()
    counters["cache"].clear()
    yield cache_dir
    local._stores.clear()
    redis_mod._stores.clear()
    plugin.reset()


def child_env(**extra: str) -> dict:
    """The environment of a subprocess: this one's, with the given variables set (values as strings)."""
    env = dict(os.environ)
    for var in ENV_VARS:
        env.pop(var, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole session; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary (Debian/Ubuntu: apt-get install -y redis-server)")
    pytest.importorskip("redis", reason="needs redis-py: pip install nexfort-cache[redis]")
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.time() + 15
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


PYTHON = sys.executable
#: a signing secret the checks accept (64 hex digits, as ``secrets.token_hex(32)`` makes), and another one
FLEET_SECRET = "5f0c8f0d2b7e4a31c9d6e2a7b4f18c3e9a0d7b6c5e4f3a2b1c0d9e8f7a6b5c4d"
OTHER_SECRET = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f91"


class RedisProcess:
    """A redis-server of one test, on its own port, that the test can pause (SIGSTOP), resume, kill and restart."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary, self.workdir, self.port = binary, workdir, _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: "subprocess.Popen | None" = None

    def start(self) -> "RedisProcess":
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.time() + 15
        while True:
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.kill()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def own_redis(tmp_path, monkeypatch):
    """A redis-server for this test alone (faults injected into it touch no other test), started; a short
    timeout and cool-down so the fault tests stay fast."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary (Debian/Ubuntu: apt-get install -y redis-server)")
    pytest.importorskip("redis", reason="needs redis-py: pip install nexfort-cache[redis]")
    monkeypatch.setenv("NEXFORT_CACHE_REDIS_TIMEOUT_S", "0.5")
    monkeypatch.setenv("NEXFORT_CACHE_REMOTE_RETRY_S", "1")
    workdir = tmp_path / "redis-own"
    workdir.mkdir()
    server = RedisProcess(binary, str(workdir)).start()
    yield server
    server.stop()
