"""Model training, evaluation, tracking and promotion."""
