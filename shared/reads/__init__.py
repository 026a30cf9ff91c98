"""Reading the ledger: filtered lists and leaderboards."""
