"""The Prefect deployments (prefect.yaml) that `visionloop deploy` applies, shipped in the wheel."""
