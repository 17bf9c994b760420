"""Code and JSON highlighted on the server (Pygments), with line numbers; no script involved."""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import JsonLexer, PythonLexer, YamlLexer

_CODE = HtmlFormatter(cssclass="hl", linenos="inline", wrapcode=True)
_DATA = HtmlFormatter(cssclass="hl", wrapcode=True)


def python(source: str) -> Markup:
    """`source` as highlighted Python with line numbers."""
    return Markup(highlight(source, PythonLexer(), _CODE))


def data(value: Any) -> Markup:
    """`value` as highlighted, indented JSON."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return Markup(highlight(text, JsonLexer(), _DATA))


def yaml_text(text: str) -> Markup:
    """YAML text, highlighted."""
    return Markup(highlight(text, YamlLexer(), _DATA))


def stylesheet() -> str:
    """The CSS of the highlighting classes."""
    return str(_CODE.get_style_defs(".hl"))
