"""The loss-table experiment (a research driver, not part of the package): see :mod:`.experiment`."""
