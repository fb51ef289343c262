"""CI smoke check of the README's first command, verbatim, on a clean clone.

    .venv/bin/python .ci/smoke_first_command.py CLONE_DIR

CLONE_DIR is a fresh clone with no .venv. The README's first command runs there exactly as written
(`scripts/setup.sh && .venv/bin/muxgate serve`), with $MUXGATE_PORT set to a free port, in its own
process group. Then, through the official `openai` client (this interpreter's, the test venv's):
the clone's .venv has the runtime dependencies only, /healthz answers, one chat completion, the real
model's answer to "What is the capital of France?" (contains Paris) and one streamed chat completion
with the printed demo key, /v1/models; SIGTERM to the process group (as
systemd sends it) must end the command with status 0 and leave no Ray process. Each failing step
exits 1 with `smoke: FAILED at <step>` and the command's output.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_commands import readme_commands  # noqa: E402

SETUP_AND_START_S = 1500  # a cold pip install of torch + ray on the 2-core CI machine, then the zoo
STOP_S = 45


class Failed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the live processes, from /proc."""
    table = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            state, ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z":
            table[int(d.name)] = (int(ppid), cmd)
    return table


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in proc_table().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found.update(kids)
        todo += kids
    return found


def ray_pids() -> set[int]:
    return {pid for pid, (_, cmd) in proc_table().items()
            if re.search(r"raylet|gcs_server|ray::|ray/_private|ray/dashboard", cmd)}


def step(name: str):
    print(f"smoke: {name}", flush=True)
    return name


def main(clone: Path) -> None:
    command = readme_commands((clone / "README.md").read_text())["serve"]
    port = free_port()
    log_path = clone / "smoke-serve.log"
    ray_before = ray_pids()
    print(f"smoke: running the README's first command verbatim in {clone}: {command}  (MUXGATE_PORT={port})",
          flush=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "MUXGATE_PORT": str(port), "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)
    current = "start"
    try:
        current = step("wait for the listening line and the demo key")
        url = key = None
        while time.monotonic() - t0 < SETUP_AND_START_S and (url is None or key is None):
            if proc.poll() is not None:
                raise Failed(f"the command exited with status {proc.returncode} before serving")
            text = log_path.read_text(errors="replace")
            if m := re.search(r"listening on (http://\S+/v1)", text):
                url = m.group(1)
            if m := re.search(r"demo key for team 'demo': (mg-\S+)", text):
                key = m.group(1)
            time.sleep(1)
        if url is None or key is None:
            raise Failed(f"no listening line and demo key after {SETUP_AND_START_S} s")
        if f":{port}/" not in url:
            raise Failed(f"it listens on {url}, not on MUXGATE_PORT={port}")
        started_s = time.monotonic() - t0

        current = step("the clone's .venv has the runtime dependencies only")
        for module in ("pytest", "openai"):  # test extras only
            probe = subprocess.run([str(clone / ".venv/bin/python"), "-c", f"import {module}"], capture_output=True)
            if probe.returncode == 0:
                raise Failed(f"`import {module}` works in the serve venv: the first command installed test extras")

        current = step("GET /healthz")
        with urllib.request.urlopen(url.removesuffix("/v1") + "/healthz", timeout=30) as r:
            if r.status != 200:
                raise Failed(f"/healthz answered {r.status}")

        import openai

        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=180)
        current = step("chat completion (model auto)")
        reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hello!"}],
                                               max_tokens=16)
        if not reply.choices[0].message.content or not reply.usage or reply.usage.completion_tokens < 1:
            raise Failed(f"empty answer: {reply}")
        print(f"smoke:   {reply.model}: {reply.choices[0].message.content!r}", flush=True)

        current = step("a real answer from the real model (smollm2-135m)")
        real = client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16, temperature=0)
        if "Paris" not in (real.choices[0].message.content or ""):
            raise Failed(f"smollm2-135m answered {real.choices[0].message.content!r}, without 'Paris'")
        print(f"smoke:   smollm2-135m: {real.choices[0].message.content!r}", flush=True)

        current = step("streamed chat completion")
        chunks = list(client.chat.completions.create(
            model=reply.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=16, stream=True,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        if not text or chunks[-1].usage is None:
            raise Failed(f"stream gave text {text!r}, last chunk {chunks[-1] if chunks else None}")

        current = step("GET /v1/models")
        models = [m.id for m in client.models.list()]
        if "auto" not in models or reply.model not in models:
            raise Failed(f"/v1/models lists {models}")

        current = step("SIGTERM to the process group: exit 0, no Ray process left")
        ours = descendants(proc.pid)
        t_stop = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            raise Failed(f"still running {STOP_S} s after SIGTERM") from None
        if rc != 0:
            raise Failed(f"the command exited with status {rc} after SIGTERM")
        deadline = time.monotonic() + 30
        while (left := (ours | (ray_pids() - ray_before)) & set(proc_table())) and time.monotonic() < deadline:
            time.sleep(0.5)
        if left:
            raise Failed(f"processes left behind: {[proc_table().get(p, (0, '?'))[1][:120] for p in left]}")
        print(f"smoke: passed (setup + start {started_s:.0f} s, stop {time.monotonic() - t_stop:.1f} s, "
              f"all {time.monotonic() - t0:.0f} s)", flush=True)
    except Exception as exc:  # noqa: BLE001 - every failure names its step
        print(f"smoke: FAILED at {current}: {type(exc).__name__}: {exc}", flush=True)
        print("---- output of the README's first command (last 80 lines) ----")
        print("\n".join(log_path.read_text(errors="replace").splitlines()[-80:]))
        sys.exit(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: smoke_first_command.py CLONE_DIR")
    main(Path(sys.argv[1]).resolve())
