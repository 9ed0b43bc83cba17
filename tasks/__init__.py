"""Prefect tasks grouped by stage; each wraps plain, tested functions of ``visionloop``."""
