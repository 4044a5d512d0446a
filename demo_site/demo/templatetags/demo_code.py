"""``{% page_code %}``: the code behind a demo page, read from its source files.

Read at each request rather than copied into the page, so what the demo shows
is always what runs.
"""

import inspect
import re
import textwrap
from pathlib import Path

from django import template

from demo import views

register = template.Library()

SHOWN_BLOCKS = ("content", "live")
"""The template blocks that make a page live: the values shown and the script."""


def template_block(source: str, name: str) -> str:
    """The text inside ``{% block name %}``, without its common indentation."""
    match = re.search(r"{%\s*block " + name + r"\s*%}(.*?){%\s*endblock", source, re.DOTALL)
    assert match, f"the template has no block {name}"
    return textwrap.dedent(match.group(1)).strip("\n")


@register.inclusion_tag("demo/code.html", takes_context=True)
def page_code(context: template.Context, *functions: str) -> dict:
    """The named functions of demo/views.py and the live parts of the page's template."""
    origin = context.template.origin
    source = Path(origin.name).read_text()
    return {
        "python": "\n\n".join(inspect.getsource(getattr(views, f)) for f in functions),
        "template_name": origin.template_name,
        "template": "\n".join(template_block(source, name) for name in SHOWN_BLOCKS),
    }
