"""Tests of actorflow.cli."""
