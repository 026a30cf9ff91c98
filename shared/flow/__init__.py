"""How work reaches the workers: dispatch, draining, the outbox, locks, completion
announcements and the backlog.
"""
