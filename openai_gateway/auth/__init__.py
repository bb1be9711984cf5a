"""Who is calling, beyond an address: users from the app's login (JWT), tokens the gateway
mints, and captcha-checked sessions.

- issuers.py  `Issuer`: one login provider's tokens, verified with PyJWT
- jwks.py     `KeySet`: its public keys, refreshed on rotation without hammering it
- minted.py   `TokenMinter`: the gateway's own HS256 tokens, stateless
- captcha.py  `CaptchaVerifier`: siteverify (Turnstile, hCaptcha, reCAPTCHA)
- caller.py   `BearerResolver`: an Authorization header -> `Caller`, None, or 401
- routes.py   POST /gateway/tokens, /gateway/session, /gateway/demo-token
- remote.py   which URLs may carry keys and secrets; bounded reads
"""
