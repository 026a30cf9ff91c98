"""Plumbing every process needs: configuration, database, Redis, logs, metrics, health,
migrations. Imports nothing else of tally.
"""
