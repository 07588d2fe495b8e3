"""``python -m examples.getting_started``: run the example."""

from examples.getting_started.main import main

raise SystemExit(main())
