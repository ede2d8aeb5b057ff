"""rerank-repo: export Hugging Face cross-encoders into a versioned OpenVINO model repository."""
