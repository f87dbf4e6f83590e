"""fedp13n.personalization."""
