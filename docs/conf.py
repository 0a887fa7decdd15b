"""Sphinx configuration of jaxar's documentation (MyST Markdown, myst-nb, autosummary).

Every build first runs docs/figures.py: the tables and figures of the results and
benchmarks pages are made from the benchmarks' JSON in docs/data/ into docs/_generated/
(git-ignored), which those pages include.
"""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_figures_spec = importlib.util.spec_from_file_location(
    "jaxar_docs_figures", ROOT / "docs" / "figures.py")
_figures = importlib.util.module_from_spec(_figures_spec)
_figures_spec.loader.exec_module(_figures)
_figures.build()

project = "jaxar"
author = "jaxar contributors"
copyright = "2026, jaxar contributors"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
# _generated: fragments the results and benchmarks pages include, not pages of their own.
exclude_patterns = ["_build", "_generated", "**.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# The quickstart notebook is rendered as stored: the test suite executes it on a smoke run.
nb_execution_mode = "off"

autosummary_generate = True
autodoc_default_options = {"members": False, "undoc-members": False}
autodoc_typehints = "description"
napoleon_google_docstring = True

html_theme = "sphinx_book_theme"
html_title = "jaxar"
