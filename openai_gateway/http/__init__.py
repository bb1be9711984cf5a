"""The HTTP edge: middlewares, health, GET /metrics, the token routes, the playground."""
