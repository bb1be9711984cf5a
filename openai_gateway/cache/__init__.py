"""The prompt cache: canonical keys, policy, single flight."""
