"""The lake: its data contract, atomic commits, locks, the label map and the one snapshot reader."""
