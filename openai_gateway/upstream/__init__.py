"""The upstream: the pooled client and the relays of its answers."""
