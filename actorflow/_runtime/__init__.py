"""actorflow/_runtime."""
