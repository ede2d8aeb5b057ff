"""`rerank-serve`: the Cohere-compatible HTTP server (FastAPI) in front of the engine."""
