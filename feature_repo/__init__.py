"""The Feast repository (feature_store.yaml, definitions.py); see README.md."""
