"""Sphinx configuration of the histodecon documentation."""

from importlib.metadata import version as _version

project = "histodecon"
author = "histodecon developers"
copyright = "2026, histodecon developers"
release = _version("histodecon")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]

autosummary_generate = True
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_defaults = "braces"
always_use_bars_union = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = "off"
nb_execution_timeout = 600
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "histodecon"
