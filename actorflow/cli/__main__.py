"""`python -m actorflow.cli`."""

import sys

from actorflow.cli import main

sys.exit(main())
