"""PyJWT's refusals as the 401 a client is told: fixed reasons, never PyJWT's own messages
(which may repeat what the token holds)."""
from __future__ import annotations

import jwt
from jwt.exceptions import InvalidSubjectError

from ..errors import InvalidToken

#: PyJWT's refusals, most specific first, as the reasons a client is told.
REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not yet valid (nbf or iat is in the future)."),
    (jwt.InvalidAudienceError, "The token's audience (aud) does not include this gateway."),
    (jwt.InvalidIssuerError, "The token's issuer (iss) is not the expected one."),
    (jwt.InvalidAlgorithmError, "The token's algorithm is not allowed for its issuer."),
    (jwt.InvalidSignatureError, "The token's signature does not verify."),
    (jwt.InvalidKeyError, "The token's key cannot be used with its algorithm."),
    (jwt.InvalidIssuedAtError, "The token's issued-at time (iat) is not a number."),
    (InvalidSubjectError, "The token's subject (sub) is not a string."),
    (jwt.DecodeError, "The token is malformed."),
)


def refusal(exc: jwt.PyJWTError) -> InvalidToken:
    """PyJWT's exception as our 401. PyJWT's own messages are not passed on: ours are fixed."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return InvalidToken(f"The token has no '{exc.claim}' claim.")
    for cls, reason in REASONS:
        if isinstance(exc, cls):
            return InvalidToken(reason)
    return InvalidToken("The token is not valid.")
