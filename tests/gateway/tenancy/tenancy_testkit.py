"""Helpers of the tenancy tests: gateway configs with a store, real `muxgate serve` processes, a
small admin client, chromium discovery. Imported by conftest.py and the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import yaml

from support import REPO, make_config

ADMIN_KEY = "mg-admin-test-" + "0123456789abcdef"
# Prices that make costs easy to reason about: a completion token costs $0.001, a prompt token
# $0.00001, so a request's cost is dominated by what it generated.
PRICES = [{"model": "mux-2m", "input_per_1m_usd": 10.0, "output_per_1m_usd": 1000.0},
          {"model": "mux-5m", "input_per_1m_usd": 20.0, "output_per_1m_usd": 2000.0}]


def tenancy_config(zoo_dir: Path, store_url: str, **overrides) -> dict:
    """make_config's gateway (two zoo models, teams alpha and beta) with a store, an admin key
    and prices; mux-5m is the baseline."""
    config = make_config(zoo_dir, store={"url": store_url}, admin={"key": ADMIN_KEY, "key_env": None},
                         pricing={"models": PRICES})
    config.update(overrides)
    return config


def chromium_binary() -> str | None:
    """Debian's chromium (scripts/install-chromium.sh installs it), or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def redis_prefix() -> str:
    return f"mgtest:{uuid.uuid4().hex[:10]}:"


class Admin:
    """A tiny admin-API client (the admin key on every call)."""

    def __init__(self, base_url: str, key: str = ADMIN_KEY):
        self.http = httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30)

    def call(self, method: str, path: str, **kw) -> dict:
        resp = self.http.request(method, path, **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def team(self, team_id: str, **limits) -> dict:
        return self.call("POST", "/v1/admin/teams", json={"id": team_id, "name": team_id, **limits})

    def key(self, team_id: str, **fields) -> dict:
        return self.call("POST", "/v1/admin/keys", json={"team": team_id, **fields})

    def close(self) -> None:
        self.http.close()


class GatewayProcess:
    """`muxgate serve --no-ray` in its own OS process, on a free port."""

    def __init__(self, config: dict, workdir: Path, name: str):
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> GatewayProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--no-ray", "--config", str(self.config_path),
             "--port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        found = threading.Event()

        def read() -> None:  # the announce line carries the port; then keep draining stdout
            for line in self.process.stdout:
                if not found.is_set() and line.startswith("muxgate listening on "):
                    self.base_url = line.split()[3].removesuffix("/v1")
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        return self

    def wait_ready(self, timeout_s: float = 90) -> GatewayProcess:
        deadline = time.monotonic() + timeout_s
        while not self.base_url:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


def session_header(response) -> dict:
    """The /reports session cookie a sign-in set, as a header to send back by hand: httpx keeps
    `Secure` cookies for HTTPS, browsers send them to http://127.0.0.1 as well."""
    name, _, rest = response.headers["set-cookie"].partition("=")
    return {"cookie": f"{name}={rest.split(';')[0]}"}
