"""Sphinx configuration of tensorbayes' API reference (``sphinx-build -W docs/api BUILD``)."""

project = "tensorbayes"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Docstrings use plain ``code`` and :class:/:func: roles to torch and Pyro objects that are not
# documented here; without intersphinx (no network) those stay plain text.
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
