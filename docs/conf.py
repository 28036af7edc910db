"""Sphinx configuration of the streamimg API reference (``make docs``)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "streamimg"
author = "the streamimg authors"
copyright = "streamimg authors, Apache-2.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",    # the quickstart is included from README.md
    "sphinxarg.ext",  # the CLI reference, from streamimg.cli.build_parser()
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = "streamimg"
napoleon_use_ivar = True  # "Attributes" as fields: no duplicates of NamedTuple members


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Leave out NamedTuple fields (their class docstring documents them)."""
    if "Alias for field number" in (getattr(obj, "__doc__", None) or ""):
        return True
    return None


def setup(app):
    """Register the hook above."""
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
smartquotes = False  # keep "--flag" as typed (not an en dash) in the CLI reference
