"""Taking work in: adjustments, batches, accounts, users and tokens, validated and recorded
once.
"""
