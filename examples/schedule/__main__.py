"""``python -m examples.schedule``: run the example."""

from examples.schedule.main import main

raise SystemExit(main())
