"""``python -m examples.kafka``: run the example."""

from examples.kafka.main import main

main()
