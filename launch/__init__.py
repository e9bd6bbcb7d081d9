"""The ``launch`` CLI: carry code and data to compute and run any job there.

Launchers know job names and module paths (``jobs.JOBS``), never models.
"""
