"""Processes, files and time: a scheduling pass, a run's life, where runs live."""
