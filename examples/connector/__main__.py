"""``python -m examples.connector``: run the example."""

from examples.connector.main import main

main()
