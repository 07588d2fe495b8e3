"""Order processing: steps, a payment callback through the gateway, a durable timeout and a
schedule, on the embedded SQLite store. ``actorflow demo`` runs it (see main.py)."""
