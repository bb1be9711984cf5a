"""Request validation as the gateway's handlers see it: the request policy's verdict as an
OpenAI-shaped error.

The rules themselves are pure and live in `policy/` (strict JSON, model allowlist, the costly
knobs, the output cap, everything the model reads); this module turns a `Refusal` into the
400 that the SDKs surface as `BadRequestError`.
"""
from __future__ import annotations

from ..config.settings import ValidationSettings
from ..errors import GatewayError, InvalidRequest, ModelNotAllowed
from ..policy import REQUIRED_INPUT, ParsedRequest, Refusal, RequestPolicy
from ..policy.form import FormPart

__all__ = ["REQUIRED_INPUT", "ParsedRequest", "Validator"]


class Validator:
    """Built once per settings; `check(route, raw)` is pure and raises `InvalidRequest`."""

    def __init__(self, settings: ValidationSettings):
        self.policy = RequestPolicy(settings)
        #: One multipart upload's bound (validation.max_upload_bytes).
        self.max_upload_bytes = settings.max_upload_bytes

    def check(self, route: str, raw: bytes, allowed_models: frozenset[str] | None = None
              ) -> ParsedRequest:
        try:
            return self.policy.check(route, raw, allowed_models)
        except Refusal as refusal:
            raise _refused(refusal) from None

    def check_form(self, route: str, parts: list[FormPart],
                   allowed_models: frozenset[str] | None = None, *, upload_bytes: int
                   ) -> ParsedRequest:
        """A multipart request, from the parts pipeline.uploads read."""
        try:
            return self.policy.check_form(route, parts, allowed_models,
                                          upload_bytes=upload_bytes)
        except Refusal as refusal:
            raise _refused(refusal) from None


def _refused(refusal: Refusal) -> GatewayError:
    kind = ModelNotAllowed if refusal.code == ModelNotAllowed.code else InvalidRequest
    return kind(refusal.message, param=refusal.param, code=refusal.code)
