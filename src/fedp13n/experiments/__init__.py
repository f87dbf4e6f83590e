"""Experiments: whole runs from a config (the EMNIST-62 personalization experiment)."""
