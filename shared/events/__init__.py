"""The event log and what reads it: the feed, webhook deliveries, the NATS stream, and the
notices tally writes itself (docs/events.md). May use any other part of shared/.
"""
