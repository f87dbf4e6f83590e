"""The ``fedp13n`` command line."""
