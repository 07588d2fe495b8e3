"""Tests of the runtime (actorflow._runtime): timers, callbacks, crashes, robustness."""
