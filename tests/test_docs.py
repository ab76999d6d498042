"""The docs work offline: every script and style they load is served with them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_script_and_style_of_the_docs_is_served_with_them() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^extra_javascript:\n((?:  - .*\n)+)", config, re.MULTILINE)
    assert block is not None
    scripts = [line.split("- ", 1)[1].split("#")[0].strip() for line in block[1].splitlines()]
    assert any("mathjax" in script and script.endswith(".js") for script in scripts[1:])  # after its configuration
    for script in scripts:
        assert not script.startswith(("http:", "https:", "//")), f"{script} needs the network"
        assert (ROOT / "docs" / script).is_file(), script
    assert "https://" not in (ROOT / "docs" / "javascripts" / "mathjax.js").read_text()
