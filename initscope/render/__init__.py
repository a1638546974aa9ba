"""Rendering results: one module per result type, each with its table, JSON, markdown, CSV, CI
and HTML/figure forms.
"""
