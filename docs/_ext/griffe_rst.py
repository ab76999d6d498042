"""Griffe extension for the API reference (loaded by mkdocstrings, not part of the package).

kdlightning's docstrings are Google style with a few reStructuredText roles. This rewrites them to
Markdown before mkdocstrings renders them:

- ``.. math::`` blocks become ``$$ ... $$`` (rendered by ``pymdownx.arithmatex``);
- ``:math:`x``` becomes ``$x$``;
- a paragraph ending in ``::`` (a literal block follows) ends in ``:``;
- ``:func:`` / ``:meth:`` / ``:class:`` / ``:mod:`` / ``:data:`` / ``:attr:`` / ``:obj:`` roles
  become cross-references, resolved in the documented object's scope (``scoped_crossrefs``).
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:[ \t]*\n)*(?:(?P=indent)[ \t]+\S.*(?:\n|$))+)", re.MULTILINE
)
_INLINE = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"::[ \t]*\n(?=[ \t]*\n)")


def _block(match: re.Match[str]) -> str:
    indent = match["indent"]
    body = textwrap.dedent(match["body"]).strip("\n")
    lines = "\n".join(f"{indent}{line}" for line in body.splitlines())
    return f"\n{indent}$$\n{lines}\n{indent}$$\n\n"


def _role(match: re.Match[str]) -> str:
    target = match[1]
    return f"[`{target}`][{target}]"


def rst_to_markdown(text: str) -> str:
    """Rewrite the reStructuredText roles and math blocks of ``text`` as Markdown."""
    text = _BLOCK.sub(_block, text)
    text = _LITERAL.sub(":\n", text)  # "In YAML it is::" + indented block: keep one colon
    text = _INLINE.sub(lambda m: f"${m[1]}$", text)
    return _ROLE.sub(_role, text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstring of ``obj`` in place."""
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
