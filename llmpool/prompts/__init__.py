"""Prompt formats: one module per format, each turning a request into runtime input.

Issue-by-issue the set grows; `generic` is the plain-text format every backend can use.
"""
