"""Two connected workflows: orders wait for payments (see main.py)."""
