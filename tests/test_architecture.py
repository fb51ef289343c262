"""The dependency rules of docs/ARCHITECTURE.md, checked on the real import graph."""

import subprocess
import sys

from support import REPO


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return set(out.stdout.split())


def test_gateway_does_not_import_torch():
    mods = imported_after("import gateway.http.app, gateway.server, gateway.cli, gateway.upstreams.backends")
    assert "torch" not in mods
    assert "transformers" not in mods


def test_lower_layers_never_import_the_gateway():
    for pkg in ("workers.pool", "workers.engine", "workers.serve_app", "policies.router", "kernels"):
        assert not any(m == "gateway" or m.startswith("gateway.") for m in imported_after(f"import {pkg}")), pkg
