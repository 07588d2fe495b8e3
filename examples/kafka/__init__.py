"""Two workflows, each with a store of its own, talking only through Kafka (see main.py)."""
