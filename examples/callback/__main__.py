"""``python -m examples.callback``: run the example."""

from examples.callback.main import main

raise SystemExit(main())
