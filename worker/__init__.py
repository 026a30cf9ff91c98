"""tally's Celery worker: thin tasks that call the ledger rules in `shared`."""
