"""Timeouts: a table reservation is held for an hour, then released unless confirmed.

``test_timeout.py`` beside it shows how to test an hour-long timeout in milliseconds.
"""
