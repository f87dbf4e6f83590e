"""fedp13n.algorithms."""
