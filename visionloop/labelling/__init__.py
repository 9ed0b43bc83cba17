"""Labelling: selection for annotation, the Label Studio server and client, handoff and sync."""
