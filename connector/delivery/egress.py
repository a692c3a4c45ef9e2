"""``aep.http``: the way out to Adobe (IMS and the DCS inlet share one HTTP client): an explicit
proxy, a CA bundle (e.g. a corporate TLS-inspecting proxy's), a client certificate.

Without these settings httpx behaves as before (certifi's CAs, ``HTTPS_PROXY``/``NO_PROXY`` from
the environment). With ``proxy`` set, the environment is ignored, so the configuration alone says
where traffic goes. The proxy's password is a separate secret: a URL with ``user:pass@`` is refused.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

if TYPE_CHECKING:
    import httpx

# httpx is imported where a client or URL is made, not here: connector.config imports this module,
# and the commands that never talk HTTP should not carry httpx (and its CLI's imports).


class AepHttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proxy: str = ""  # http://proxy.corp:3128 (HTTPS goes through it with CONNECT)
    proxy_username: str = ""
    proxy_password: SecretStr = SecretStr("")
    proxy_password_file: str = ""
    ca_file: str = ""  # CA bundle trusted instead of certifi's (PEM)
    client_cert: str = ""  # PEM certificate (chain) for mutual TLS
    client_key: str = ""  # its PEM key (unencrypted), if not inside client_cert

    @model_validator(mode="after")
    def _check(self) -> AepHttpConfig:
        from connector.kafka.security import load_secret_file

        load_secret_file(self, "proxy_password")
        if self.proxy:
            import httpx

            url = httpx.URL(self.proxy)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("proxy must be an http:// or https:// URL with a host")
            if url.userinfo:
                raise ValueError("proxy: put the credentials in proxy_username / proxy_password, not in the URL")
        if bool(self.proxy_username) != bool(self.proxy_password.get_secret_value()):
            raise ValueError("proxy_username and proxy_password go together")
        if self.client_key and not self.client_cert:
            raise ValueError("client_key needs client_cert")
        for key in ("ca_file", "client_cert", "client_key"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ValueError(f"{key} {path!r} is not a readable file")
        try:
            ssl_context(self)
        except (ssl.SSLError, OSError) as exc:  # a bad PEM: say so at start, not at the first request
            raise ValueError(f"ca_file/client_cert/client_key cannot be loaded: {exc}") from None
        return self

    def secret_values(self) -> list[str]:
        value = self.proxy_password.get_secret_value()
        return [value] if value else []


def ssl_context(cfg: AepHttpConfig) -> ssl.SSLContext | None:
    """None: httpx's default verification (certifi)."""
    if not cfg.ca_file and not cfg.client_cert:
        return None
    if cfg.ca_file:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
    else:
        import certifi

        ctx = ssl.create_default_context(cafile=certifi.where())
    if cfg.client_cert:
        ctx.load_cert_chain(cfg.client_cert, cfg.client_key or None)
    return ctx


def client_options(cfg: AepHttpConfig) -> dict[str, Any]:
    """Keyword arguments for ``httpx.Client`` (the caller adds timeouts and limits)."""
    opts: dict[str, Any] = {}
    ctx = ssl_context(cfg)
    if ctx is not None:
        opts["verify"] = ctx
    if cfg.proxy:
        auth = (cfg.proxy_username, cfg.proxy_password.get_secret_value()) if cfg.proxy_username else None
        import httpx

        opts["proxy"] = httpx.Proxy(cfg.proxy, auth=auth)
        opts["trust_env"] = False
    return opts


def aep_client(cfg: AepHttpConfig, **kwargs: Any) -> httpx.Client:
    """The HTTP client for IMS and the inlet."""
    import httpx

    return httpx.Client(**client_options(cfg), **kwargs)


def describe_http_error(exc: BaseException) -> str:
    """What went wrong on the way out, for a log line or an exit message: the exception's type and
    httpx's own words (name resolution, refused connection, certificate), redacted, with a hint where
    the usual cause is the way out itself (a proxy, a TLS-inspecting proxy's CA)."""
    from connector.telemetry.logs import redact

    text = redact(str(exc)).strip()
    found = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    lowered = text.lower()
    if "certificate" in lowered or "ssl" in lowered:
        hint = "behind a TLS-inspecting proxy, set aep.http.ca_file to its CA bundle"
    elif "proxy" in lowered or type(exc).__name__ == "ProxyError":
        hint = "check aep.http.proxy"
    elif "name or service not known" in lowered or "nodename nor servname" in lowered or "name resolution" in lowered:
        hint = "check the URL, DNS, or whether egress needs aep.http.proxy"
    else:
        return found[:500]
    return f"{found[:450]} ({hint})"


class OneShotBody:
    """A request body httpx reads once, let go of when the exchange ends (``release``). httpx's and
    httpcore's request and response objects reference each other (cycles, measured with httpx 0.28),
    so a ``bytes`` body lived until the cyclic GC's next full collection: ~750 KB per inlet request
    (120 MB more at the bench's peak once collections were rarer), a whole file or 64 MB chunk per
    batch-ingestion upload. With this the cycles hold an empty wrapper. The caller sets
    Content-Length (an iterable body would otherwise go chunked)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data

    def release(self) -> None:
        self.data = b""
