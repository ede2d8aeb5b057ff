"""Session fixtures that build test models and exported repositories (filled in below)."""
