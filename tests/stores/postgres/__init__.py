"""Tests of actorflow.stores.postgres."""
