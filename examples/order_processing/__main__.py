"""``python -m examples.order_processing``: the demo (same as ``actorflow demo``)."""

from examples.order_processing.main import main

raise SystemExit(main())
