"""The parts of ``af.Workflow``, one concept per module, below the public API.

``actorflow.workflow.Workflow`` composes them; nothing here is public and nothing here
imports ``actorflow.workflow``. ``core`` holds the shared state and argument checks; the
others are mixins over it: ``triggers``, ``queries``, ``awaiting`` (``await_status``),
``control`` (callback and run-state controls) and ``lifecycle`` (run/stop, services,
check/migrate, states).
"""
