"""Schedules: invoices are sent every weekday at 09:00 (cron), skipping holidays."""
