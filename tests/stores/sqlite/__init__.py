"""Tests of actorflow.stores.sqlite."""
