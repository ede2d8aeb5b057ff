"""HTTP routers: rerank (Cohere, OVMS and TEI paths), health and model metadata, metrics."""
