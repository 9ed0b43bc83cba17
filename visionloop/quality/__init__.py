"""Quality: the Great Expectations gate on a batch and on the table it would make."""
