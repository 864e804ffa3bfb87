"""inventory-graphql: sell scarce stock without overselling it."""
