"""rerank_operator."""
