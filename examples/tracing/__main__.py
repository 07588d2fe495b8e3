"""``python -m examples.tracing``: run the example."""

from examples.tracing.main import main

raise SystemExit(main())
