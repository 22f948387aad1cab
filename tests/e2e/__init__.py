"""End to end: the entry points in subprocesses, several processes, faults, a new user, the notebook."""
