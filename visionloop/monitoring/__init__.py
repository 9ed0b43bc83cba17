"""Monitoring: Evidently drift of new images against the champion's, and the nightly decision."""
