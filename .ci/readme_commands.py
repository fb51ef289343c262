"""The README's two commands, verbatim: the first bash block of README.md, one command a line.

Line 1 sets up and runs `muxgate serve`; line 2 sets up and runs the tests. CI runs exactly this
text (the trailing `# comment` dropped), so a README that stops working fails CI. Standard library
only: it runs before any virtual environment exists.

    python3 .ci/readme_commands.py serve|test
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands(text: str) -> dict[str, str]:
    block = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    if block is None:
        raise ValueError("README.md has no ```bash block")
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    # A comment starts at a ` #` outside quotes; the README's commands have no quotes.
    commands = [re.split(r"\s+#\s", ln, maxsplit=1)[0].strip() for ln in lines]
    if len(commands) != 2:
        raise ValueError(f"README.md's first bash block has {len(commands)} commands, not the two of the contract")
    serve, test = commands
    if "muxgate serve" not in serve or "pytest" not in test:
        raise ValueError(f"README.md's first bash block is not (serve, test): {commands}")
    return {"serve": serve, "test": test}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        print(readme_commands(README.read_text())[which])
    except (ValueError, KeyError) as exc:
        print(f"readme_commands: {exc or 'usage: readme_commands.py serve|test'}", file=sys.stderr)
        sys.exit(2)
