"""actorflow/stores/postgres."""
