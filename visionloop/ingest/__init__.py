"""Ingest: what a landing batch holds (landing layouts) and the shipped sample data."""
