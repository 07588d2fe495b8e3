"""Callbacks: an expense waits for an approver's decision, handed in as a JSON payload."""
