"""actorflow/stores/sqlite."""
