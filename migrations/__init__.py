"""Alembic migrations of tally's schema."""
