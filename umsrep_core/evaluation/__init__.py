"""Evaluation of bundles: metrics and the Markdown/JSON/PNG report."""
