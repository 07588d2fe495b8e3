"""actorflow/_services."""
