"""Inference engine: OpenVINO model and tokenizer, row assembly, batching and version hot swap.

Nothing in this package imports the web framework; the server maps its results and errors to HTTP.
"""
