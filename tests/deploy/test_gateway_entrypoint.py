"""deploy/docker/gateway-entrypoint.sh: the gateway and its local Ray node live and die together.

`ray`, `python` and the gateway are small stand-in scripts, so this runs in a second without Ray:
what is tested is the process handling (start order, signal forwarding, exit codes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import REPO

SCRIPT = REPO / "deploy" / "docker" / "gateway-entrypoint.sh"

RAY_STUB = """#!/usr/bin/env bash
case "$1" in
  start) echo "$*" > "$STUB_DIR/ray.args"; echo $$ > "$STUB_DIR/ray.pid"; exec sleep 1000 ;;
  stop) kill "$(cat "$STUB_DIR/ray.pid")" 2>/dev/null; exit 0 ;;
esac
"""
# The raylet health poll: healthy at once.
PYTHON_STUB = "#!/usr/bin/env bash\nexit 0\n"
# A gateway that drains on SIGTERM and records what it was started with.
GATEWAY_STUB = """#!/usr/bin/env bash
trap 'echo drained > "$STUB_DIR/gateway.drained"; exit 0' TERM
echo "$*" > "$STUB_DIR/gateway.args"
while true; do sleep 0.05; done
"""


@pytest.fixture
def stubs(tmp_path) -> Path:
    for name, text in (("ray", RAY_STUB), ("python", PYTHON_STUB), ("fake-gateway", GATEWAY_STUB)):
        path = tmp_path / name
        path.write_text(text)
        path.chmod(0o755)
    return tmp_path


def start(stubs: Path, **env) -> subprocess.Popen:
    environ = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_DIR": str(stubs),
               "MUXGATE_RAY_ADDRESS": "muxgate-pool-head-svc:6379", **env}
    proc = subprocess.Popen(["bash", str(SCRIPT), "fake-gateway", "serve", "--ray-address", "x"], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 10
    while not (stubs / "gateway.args").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the gateway never started"
        time.sleep(0.02)
    return proc


def test_sigterm_drains_the_gateway_and_exits_cleanly(stubs):
    proc = start(stubs)
    assert "--address=muxgate-pool-head-svc:6379" in (stubs / "ray.args").read_text()
    assert "--num-cpus=0 --num-gpus=0" in (stubs / "ray.args").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert (stubs / "gateway.drained").exists(), "the gateway got SIGTERM and drained"


def test_a_dead_ray_node_stops_the_gateway_so_the_pod_restarts(stubs):
    proc = start(stubs)
    os.kill(int((stubs / "ray.pid").read_text()), signal.SIGKILL)
    assert proc.wait(timeout=10) == 1, proc.stdout.read()
    assert (stubs / "gateway.drained").exists()


def test_refuses_to_start_without_the_ray_address(stubs):
    environ = {k: v for k, v in os.environ.items() if k != "MUXGATE_RAY_ADDRESS"}
    out = subprocess.run(["bash", str(SCRIPT), "fake-gateway"], env=environ, capture_output=True, text=True)
    assert out.returncode != 0 and "MUXGATE_RAY_ADDRESS" in out.stderr
