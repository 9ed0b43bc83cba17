"""Embeddings: the frozen embedder, the vector index, near-duplicates and split leakage."""
