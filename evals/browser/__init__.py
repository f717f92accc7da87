"""The static HTML feature browser (`sae browse`): index with search, a page per feature, a 2-D map."""

from evals.browser.site import build_browser

__all__ = ["build_browser"]
