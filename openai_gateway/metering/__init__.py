"""Request limits, token and dollar budgets, prices and money, limit headers."""
