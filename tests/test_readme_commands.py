"""The README's two commands are the contract with a new user: CI runs them verbatim (.ci/run reads
them with .ci/readme_commands.py), and here the set-up half of the first one is run as written."""

import importlib.util
import subprocess

import pytest

from support import REPO

spec = importlib.util.spec_from_file_location("readme_commands", REPO / ".ci" / "readme_commands.py")
readme_commands = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_commands)


def test_the_readme_starts_with_the_serve_and_the_test_command():
    commands = readme_commands.readme_commands((REPO / "README.md").read_text())
    assert commands == {"serve": "scripts/setup.sh && .venv/bin/muxgate serve",
                        "test": "scripts/setup.sh --test && .venv/bin/python -m pytest"}


def test_ci_runs_the_readme_commands_it_reads_not_a_copy():
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_commands.py test" in ci and "readme_commands.py serve" in ci
    assert 'bash -c "$test_cmd"' in ci and "smoke_first_command.py" in ci


@pytest.mark.parametrize("block, error", [
    ("```bash\nscripts/setup.sh && .venv/bin/muxgate serve\n```\n", "has 1 commands"),
    ("```bash\nmake\nmake test\n```\n", "is not (serve, test)"),
    ("no code here\n", "no ```bash block"),
])
def test_a_readme_without_the_two_commands_is_refused(block, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        readme_commands.readme_commands(block)


def test_the_first_commands_setup_exits_0_and_a_second_run_installs_nothing():
    """The first command's set-up, as the README writes it (no flag). It used to exit 1 at once:
    its stamp line's `$( [ -n "$extras" ] && echo -test )` fails under `set -e` without --test."""
    setup = readme_commands.readme_commands((REPO / "README.md").read_text())["serve"].split(" && ")[0]
    assert setup == "scripts/setup.sh"
    first = subprocess.run(["bash", "-c", setup], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "setup:" in first.stderr  # it says what it does
    again = subprocess.run(["bash", "-c", setup], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "nothing to install" in again.stderr


def test_muxgate_port_moves_the_serve_command_and_a_bad_value_is_refused(monkeypatch, capsys):
    from gateway.cli import build_parser, serve_port

    parse = build_parser().parse_args
    assert serve_port(parse(["serve"])) is None  # server.port from the config
    monkeypatch.setenv("MUXGATE_PORT", "18123")
    assert serve_port(parse(["serve"])) == 18123
    assert serve_port(parse(["serve", "--port", "9"])) == 9  # the flag wins
    monkeypatch.setenv("MUXGATE_PORT", "80a")
    with pytest.raises(SystemExit) as exc:
        serve_port(parse(["serve"]))
    assert exc.value.code == 2 and "MUXGATE_PORT='80a'" in capsys.readouterr().err
