"""Sphinx configuration of the histodecon documentation."""

import logging
import os
import warnings
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
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]

autosummary_generate = True
# Class pages list the class's own methods and attributes: PatchEncoder would otherwise list every
# method of torch.nn.Module, whose Google-style docstrings do not parse as reST.
templates_path = ["_templates"]
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_defaults = "braces"
always_use_bars_union = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
# The tutorials are stored without outputs and executed at build time; results are cached in
# docs/_build/.jupyter_cache, so a notebook reruns only when its code changes. A failing notebook
# fails the build.
nb_execution_mode = "cache"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# The tutorials run offline, as under `make test`: encoder weights come from disk, never the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ".rst" first: autosummary writes its API stubs with the first suffix, and they are reST.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]
# sphinx-autodoc-typehints calls an API Sphinx 10 removes, once per docstring; the build log stays
# for our own messages (`make docs` fails on any warning or docutils message in it).
warnings.filterwarnings("ignore", message=r".*_RstSnippetParser\.set_application' is deprecated")
# squidpy's docstrings name parameters docrep does not know, at import.
warnings.filterwarnings("ignore", message=r"'\w+' is not a valid key!", category=SyntaxWarning)
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "histodecon"

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "pandas": ("https://pandas.pydata.org/docs", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable", None),
}
intersphinx_timeout = 10


class _OfflineInventories(logging.Filter):
    """Let an offline build pass ``-W``: unreachable inventories only leave external links unresolved.

    intersphinx reports them as an untyped warning that ``suppress_warnings`` cannot select; with
    network access every inventory loads and the references link to the scverse docs.
    """

    reported = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to reach any of the inventories" not in record.getMessage():
            return True
        if not self.reported:
            print("intersphinx: inventories unreachable (offline?); external references stay unlinked")
            self.reported = True
        return False


def setup(app):
    """Install the offline filter of intersphinx warnings."""
    logging.getLogger("sphinx.sphinx.ext.intersphinx").addFilter(_OfflineInventories())
