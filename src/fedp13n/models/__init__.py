"""fedp13n.models."""
