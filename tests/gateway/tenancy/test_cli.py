"""`muxgate teams|keys|report`: the same operations as the admin API, on the config's store,
seen at once by a gateway running on that store."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import openai
import pytest
import yaml

from gateway.cli import main
from support import REPO
from tenancy_testkit import tenancy_config


@pytest.fixture
def setup(zoo_dir, tmp_path):
    raw = tenancy_config(zoo_dir, f"sqlite:///{tmp_path / 'muxgate.db'}")
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, str(path)


def run(capsys, config: str, *argv: str):
    main([*argv, "--config", config])
    out = capsys.readouterr().out
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return out


def test_teams_and_keys_commands(setup, capsys):
    _, config = setup
    team = run(capsys, config, "teams", "create", "Platform", "--id", "plat", "--budget", "12.5", "--period",
               "daily", "--rpm", "100", "--models", "mux-2m,mux-5m")
    assert team == {**team, "id": "plat", "name": "Platform", "budget_usd": 12.5, "budget_period": "daily",
                    "rpm_limit": 100, "allowed_models": ["mux-2m", "mux-5m"]}
    assert "plat" in [t["id"] for t in run(capsys, config, "teams", "list")["data"]]
    updated = run(capsys, config, "teams", "update", "plat", "--budget", "none", "--tpm", "5000")
    assert updated["budget_usd"] is None and updated["tpm_limit"] == 5000 and updated["rpm_limit"] == 100
    assert run(capsys, config, "teams", "show", "plat")["spend"]["spent_usd"] == 0

    created = run(capsys, config, "keys", "create", "--team", "plat", "--name", "ci", "--rpm", "10")
    assert created["secret"].startswith(created["display_prefix"]) and created["rpm_limit"] == 10
    listed = run(capsys, config, "keys", "list", "--team", "plat")
    assert [k["id"] for k in listed["data"]] == [created["id"]] and "secret" not in json.dumps(listed)
    rotated = run(capsys, config, "keys", "rotate", created["id"], "--grace", "60")
    assert rotated["id"] != created["id"] and rotated["rpm_limit"] == 10
    revoked = run(capsys, config, "keys", "revoke", rotated["id"])
    assert revoked["active"] is False
    assert run(capsys, config, "teams", "delete", "plat")["deleted"] is True

    with pytest.raises(SystemExit) as info:
        main(["teams", "show", "plat", "--config", config])
    assert info.value.code == 1 and "not found" in capsys.readouterr().err


def test_a_teams_share_is_set_and_changed_by_the_cli(setup, capsys):
    _, config = setup
    assert run(capsys, config, "teams", "create", "Batch", "--id", "batch", "--share", "0.5")["share"] == 0.5
    updated = run(capsys, config, "teams", "update", "batch", "--share", "3", "--rpm", "10")
    assert (updated["share"], updated["rpm_limit"]) == (3.0, 10)
    assert run(capsys, config, "teams", "update", "batch", "--rpm", "20")["share"] == 3.0
    assert {t["id"]: t["share"] for t in run(capsys, config, "teams", "list")["data"]}["batch"] == 3.0
    for bad in ("0", "inf"):
        with pytest.raises(SystemExit) as info:
            main(["teams", "update", "batch", "--share", bad, "--config", config])
        assert info.value.code == 1 and "'share'" in capsys.readouterr().err
    assert run(capsys, config, "teams", "show", "batch")["share"] == 3.0


def test_a_key_made_by_the_cli_works_on_a_running_gateway_until_the_cli_revokes_it(setup, start_server, capsys):
    raw, config = setup
    server = start_server(raw)
    run(capsys, config, "teams", "create", "Ops", "--id", "ops")
    created = run(capsys, config, "keys", "create", "--team", "ops")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=created["secret"], max_retries=0, timeout=60)
    client.completions.create(model="mux-2m", prompt="Hello", max_tokens=3)
    assert client.models.list()

    run(capsys, config, "keys", "revoke", created["id"])
    deadline = time.monotonic() + 1.0
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the gateway still accepts a key the CLI revoked"
        time.sleep(0.02)

    time.sleep(0.3)  # let the earlier request settle
    report = run(capsys, config, "report", "--team", "ops", "--from", "2000-01-01", "--group-by", "team,model")
    assert report["team"] == "ops" and report["totals"]["requests"] == 1
    assert report["data"][0]["model"] == "mux-2m" and report["totals"]["cost_usd"] > 0
    csv_text = run(capsys, config, "report", "--team", "ops", "--from", "2000-01-01", "--format", "csv")
    assert csv_text.splitlines()[0].startswith("team,model,day,requests")
    html = run(capsys, config, "report", "--from", "2000-01-01", "--format", "html", "--bucket", "day")
    assert html.startswith("<!doctype html>") and '"team":"ops"' in html


def test_cli_entry_point_runs_in_its_own_process(setup):
    _, config = setup
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "teams", "list", "--config", config],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["object"] == "list"
