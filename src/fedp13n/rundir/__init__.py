"""A run directory: its file names and columns (``layout``) and their readers (``readers``).

One place below both the experiment that writes a run and the reports that read it.
"""
