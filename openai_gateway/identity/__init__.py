"""Who is calling: addresses, client keys, verified tokens (JWKS, minted, captcha)."""
