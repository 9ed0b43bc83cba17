"""visionloop: keep image classifiers fresh. Importing it does nothing; see the subpackages.

One folder a stage of the loop: ``lake`` (contract, commits, locks, snapshots), ``ingest``,
``quality``, ``training``, ``registry``; ``preprocessing`` is the one function that turns
image bytes into what a model sees.
"""
