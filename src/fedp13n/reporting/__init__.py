"""fedp13n.reporting."""
