"""Processes of the chaos bench (loadtests/chaos.py) and of tests/reliability: `muxgate serve`
gateways and private redis-servers that can be killed and restarted, and the gateway config the
faults run. The client side is loadtests/chaos_client.py, the ledger side loadtests/chaos_ledger.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
ADMIN_KEY = "mg-chaos-admin-0123456789abcdef"
MODEL = "mux-2m"
# Completion tokens only: a mux-2m token costs exactly $0.001, so a request's worst case
# (max_tokens tokens) is what it costs when it runs to max_tokens, and budgets are sharp.
PRICES = [{"model": "mux-2m", "output_per_1m_usd": 1000.0}, {"model": "mux-5m", "output_per_1m_usd": 2000.0}]
TOKEN_USD = Decimal("0.001")
LOAD_MAX_TOKENS = 4
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def budget_for(requests: int, max_tokens: int = LOAD_MAX_TOKENS) -> Decimal:
    """A budget that holds `requests` worst cases of the load's requests (and not one more)."""
    return TOKEN_USD * max_tokens * requests


def ensure_zoo(zoo_dir: Path, names=("mux-2m", "mux-5m")) -> Path:
    from workers.zoo import build_zoo

    build_zoo(Path(zoo_dir), list(names), progress=False)
    return Path(zoo_dir)


def gateway_config(zoo_dir: Path, store_url: str, *, models: list[dict] | None = None, pool: dict | None = None,
                   store: dict | None = None, **server) -> dict:
    """A `muxgate serve --no-ray` config: mux-2m (and what `models` adds) in-process, a store, the
    chaos admin key and PRICES. `server` keys override the server section."""
    return {
        "version": 1,
        "server": {"host": "127.0.0.1", "default_max_tokens": 8, "stream_first_token_timeout_s": 30.0, **server},
        "zoo": {"dir": str(zoo_dir), "build_on_start": False},
        "models": models or [{"name": MODEL, "zoo": True}],
        # the KV reserve covers the longest stream a scenario sends (1,500 tokens; the zoo context is 2,048)
        "pool": {"backend": "inprocess", "torch_threads": 1, "kv_reserve_tokens": 2048, "prefix_cache_mb": 4,
                 **(pool or {})},
        "routing": {"default_model": MODEL},
        "store": {"url": store_url, **(store or {})},
        "admin": {"key": ADMIN_KEY, "key_env": None},
        "pricing": {"models": PRICES},
    }


class GatewayProcess:
    """`muxgate serve --no-ray` as its own OS process on a fixed port, so it can be killed and
    restarted on the same address and store."""

    def __init__(self, config: dict, workdir: Path, name: str, port: int | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.config = {**config, "server": {**config["server"], "port": self.port}}
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / f"{name}.log"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.store_url = config["store"]["url"]
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "GatewayProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MUXGATE_ADMIN_KEY", None)
        with open(self.log_path, "a") as log:
            log.write(f"--- start {self.starts} ---\n")
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--no-ray", "--config", str(self.config_path),
                 "--port", str(self.port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> "GatewayProcess":
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway {self.name} did not start:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: nothing runs after this (no drain, no settlement)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> None:
        """SIGTERM: uvicorn stops accepting, finishes in-flight requests, drains settlements."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    stop = terminate

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class RedisProcess:
    """A private redis-server on a free port. `persistent`: append-only file fsynced on every
    write in `workdir`, so a restart (even after SIGKILL) keeps every acknowledged write."""

    def __init__(self, workdir: Path, persistent: bool = True, port: int | None = None):
        self.workdir = workdir
        self.persistent = persistent
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> "RedisProcess":
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.workdir), "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying its append-only file
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
