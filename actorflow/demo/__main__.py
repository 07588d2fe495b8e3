"""``python -m actorflow.demo``: the demo (same as ``actorflow demo``)."""

from actorflow.demo.main import main

raise SystemExit(main())
