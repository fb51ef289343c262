"""`muxgate serve` as a user runs it: a subprocess that prints where it listens and a demo key."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from support import REPO

STOP_BOUND_S = 45  # a clean stop takes a few seconds; it used to take ~60 s when Ray got the signal too


def start_serve(tmp_path, zoo_dir, backend, extra_args=(), **popen):
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
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


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


def state_and_parent(pid):
    """(state letter, parent pid) from /proc (Linux), or None when the process is gone."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, IndexError, ValueError):
        return None
    return state, int(ppid)


def alive(pids):
    return [pid for pid in pids if (s := state_and_parent(pid)) and s[0] != "Z"]  # a zombie has exited


def descendants(pid):
    """Live processes started under `pid`: a local Ray's GCS, raylet and workers."""
    children = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        if (s := state_and_parent(pid_dir.name)) and s[0] != "Z":
            children.setdefault(s[1], []).append(int(pid_dir.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def assert_stops_cleanly(proc, ray_processes):
    """`muxgate serve` exits 0 well within STOP_BOUND_S, and takes the local Ray down with it."""
    try:
        output, _ = proc.communicate(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"muxgate serve still running {STOP_BOUND_S} s after SIGTERM")
    assert proc.returncode == 0, output[-3000:]
    deadline = time.time() + 30
    while alive(ray_processes) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(ray_processes), "Ray processes left behind"


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
        exercise(url, key)  # both models resident
        ray_processes = descendants(proc.pid)
        assert ray_processes
        proc.send_signal(signal.SIGTERM)  # `kill PID`, `docker stop`: a clean stop exits 0 (it was 15)
        assert_stops_cleanly(proc, ray_processes)
    finally:
        stop(proc)


@pytest.mark.ray
def test_serve_on_a_local_ray_stops_when_the_whole_process_group_gets_sigterm(tmp_path, zoo_dir):
    """What service managers do (systemd signals the service's cgroup; `kill -- -PGID`): Ray's own
    processes get the SIGTERM as well. muxgate used to wait on the dead Serve controller until Ray's
    60 s GCS timeout aborted it with status 1."""
    proc = start_serve(tmp_path, zoo_dir, "ray", start_new_session=True)  # its own group, not pytest's
    try:
        url, key = wait_for_banner(proc, timeout=300)
        exercise(url, key)
        ray_processes = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGTERM)
        assert_stops_cleanly(proc, ray_processes)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
