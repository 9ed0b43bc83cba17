"""Registry: the MLflow tracking resource, lineage, the served model and promotion."""
