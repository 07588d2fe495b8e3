"""Tests of the services (actorflow._services): schedules, connectors, relay, hooks."""
