"""``python -m examples.timeout``: run the example."""

from examples.timeout.main import main

raise SystemExit(main())
