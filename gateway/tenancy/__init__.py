"""Teams and their keys: authentication, admission against budgets and rate limits, costs, usage reports, admin."""
