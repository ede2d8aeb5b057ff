"""rerank_runtime."""
