"""`muxgate serve` as a user runs it: a subprocess that prints where it listens and a demo key."""

import os
import re
import subprocess
import sys
import time

import openai
import pytest
import yaml

from support import REPO


def start_serve(tmp_path, zoo_dir, backend, extra_args=()):
    config = {
        "version": 1,
        "keys": [{"team": "demo", "name": "demo", "key_file": str(tmp_path / "demo.key")}],
        "zoo": {"dir": str(zoo_dir), "build_on_start": True},
        "models": [{"name": "mux-2m", "zoo": True}, {"name": "mux-5m", "zoo": True}],
        "pool": {"backend": backend, "torch_threads": 1, "num_cpus": 0.5},
        "routing": {"default_model": "mux-5m"},
        "store": {"url": f"sqlite:///{tmp_path / 'muxgate.db'}"},  # not the repo's var/
        "admin": {"key_file": str(tmp_path / "admin.key")},
    }
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", "0", *extra_args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_banner(proc, timeout=180):
    """Read output until the listening line and the demo key line; return (base_url, key)."""
    url = key = None
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline and (url is None or key is None):
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if m := re.search(r"listening on (http://\S+/v1)", line):
            url = m.group(1)
        if m := re.search(r"demo key for team 'demo': (mg-\S+)", line):
            key = m.group(1)
    assert url and key, "".join(seen)
    return url, key


def exercise(url, key):
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    out = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                         temperature=0)
    assert out.choices[0].message.content and out.usage.completion_tokens == 4
    assert out.model == "mux-5m"
    chunks = list(client.chat.completions.create(model="mux-2m", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=6, stream=True, stream_options={"include_usage": True},
                                                 temperature=0))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    assert chunks[-1].usage.completion_tokens == 6
    assert {"auto", "mux-2m", "mux-5m"} <= {m.id for m in client.models.list()}


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_in_process_prints_address_and_demo_key(tmp_path, zoo_dir):
    proc = start_serve(tmp_path, zoo_dir, "inprocess")
    try:
        url, key = wait_for_banner(proc)
        assert (tmp_path / "demo.key").read_text().strip() == key
        assert oct((tmp_path / "demo.key").stat().st_mode & 0o777) == "0o600"
        exercise(url, key)
    finally:
        stop(proc)


@pytest.mark.ray
def test_serve_on_a_local_ray_serves_the_zoo_through_ray_serve(tmp_path, zoo_dir):
    proc = start_serve(tmp_path, zoo_dir, "ray")
    try:
        url, key = wait_for_banner(proc, timeout=300)
        exercise(url, key)
    finally:
        stop(proc)
