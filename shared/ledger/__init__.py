"""The money rules: applying requests to balances, the points rules, the timers that make
requests, and reconciliation.
"""
