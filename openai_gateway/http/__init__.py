"""The HTTP edge: middlewares, health, the gateway's own token routes, the playground."""
