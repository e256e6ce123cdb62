"""HTTP authentication settings of outbound requests: none, bearer (RFC 6750) or basic (RFC 7617).

These are configuration models (``auth = { type = "bearer", token_file = "..." }``
in ``[[delivery.destinations]]`` and ``[[sources.pollers]]``); secrets are kept as
:class:`pydantic.SecretStr` so they never show in ``repr`` or logs, and a secret
kept in a file is read at each use, so rotating it needs no restart.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from dicom_node.net.policy import OutboundError

__all__ = ["BasicAuth", "BearerAuth", "HttpAuth", "NoAuth", "auth_headers"]


def _read_secret(inline: SecretStr | None, path: Path | None, what: str) -> str:
    if inline is not None:
        return inline.get_secret_value()
    assert path is not None  # guaranteed by the model validators
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OutboundError(f"cannot read {what} file {path}: {exc.strerror}", retryable=False) from exc


class _Model(BaseModel):
    """Base: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuth(_Model):
    """No HTTP authentication."""

    type: Literal["none"] = "none"


class BearerAuth(_Model):
    """``Authorization: Bearer`` (RFC 6750); the token inline or, better, in a file."""

    type: Literal["bearer"]
    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BearerAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("bearer auth needs exactly one of token or token_file")
        return self

    def secret(self) -> str:
        """Return the token (read from ``token_file`` at each call so rotation needs no restart).

        Raises
        ------
        OutboundError
            The token file cannot be read (not retryable).
        """
        return _read_secret(self.token, self.token_file, "token")


class BasicAuth(_Model):
    """HTTP Basic authentication (RFC 7617); the password inline or in a file."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("basic auth needs exactly one of password or password_file")
        return self

    def secret(self) -> str:
        """Return the password.

        Raises
        ------
        OutboundError
            The password file cannot be read (not retryable).
        """
        return _read_secret(self.password, self.password_file, "password")


HttpAuth = Annotated[NoAuth | BearerAuth | BasicAuth, Field(discriminator="type")]


def auth_headers(auth: NoAuth | BearerAuth | BasicAuth) -> dict[str, str]:
    """The ``Authorization`` header for ``auth`` (empty for none); secrets are read now.

    Raises
    ------
    OutboundError
        A secret file cannot be read (not retryable).
    """
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {auth.secret()}"}
    if isinstance(auth, BasicAuth):
        # RFC 7617 2: user-id ":" password, UTF-8 (the charset requests uses as well).
        token = base64.b64encode(f"{auth.username}:{auth.secret()}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    return {}
