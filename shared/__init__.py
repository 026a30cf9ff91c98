"""Common code of the API and the worker: configuration, models, ledger rules, idempotency."""
