"""actorflow/_model."""
