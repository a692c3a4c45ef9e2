"""``kafka.security``: how every Kafka client of the project (connector consumer and producers, the
webhook ingress, ``check``, ``dlq replay``) reaches a secured cluster, as librdkafka properties.

Secrets (SASL password, OIDC client secret, TLS key password) are ``SecretStr``: ``repr()`` and
validation errors show ``**********``; :func:`secret_values` lists them for the log redaction. They
leave their wrapper only in :func:`security_properties`, the dict handed to librdkafka.

MSK IAM has no static credential: librdkafka calls ``oauth_cb`` for a short-lived token signed by
``aws-msk-iam-sasl-signer-python`` (the optional ``aws`` extra, imported only when configured).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]

# librdkafka properties that hold secrets (CONFIGURATION.md marks them sensitive): refused in
# kafka.extra, where they would be a plain dict entry (printed by repr(), unknown to the log
# redaction). Any other name that reads like a secret is refused too (:func:`is_secret_property`),
# so a property librdkafka adds later is not let through by default.
SECRET_PROPERTIES = frozenset({
    "sasl.password", "sasl.oauthbearer.client.secret", "ssl.key.password", "ssl.keystore.password",
    "ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem", "sasl.kerberos.keytab",
})
_SECRET_NAME = re.compile(r"password|passphrase|secret|token|credential|private\.key|\.pem\Z|keytab", re.I)


def is_secret_property(name: str) -> bool:
    # ssl.certificate.pem and ssl.ca.pem are public material, not secrets.
    return name in SECRET_PROPERTIES or (bool(_SECRET_NAME.search(name))
                                         and name not in ("ssl.certificate.pem", "ssl.ca.pem"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(path: str, key: str) -> SecretStr:
    try:
        return SecretStr(Path(path).read_text().strip())
    except OSError as exc:
        raise ValueError(f"{key} {path!r} cannot be read: {exc.strerror}") from None


def load_secret_file(model: BaseModel, field: str) -> None:
    """``<field>_file`` fills ``<field>`` when the secret itself is not set (env wins)."""
    path = getattr(model, f"{field}_file")
    if path and not getattr(model, field).get_secret_value():
        object.__setattr__(model, field, _read_secret(path, f"{field}_file"))


class SaslConfig(_Section):
    mechanism: Mechanism = "PLAIN"
    username: str = ""
    password: SecretStr = SecretStr("")
    password_file: str = ""
    # OAUTHBEARER: "oidc" = librdkafka's own client-credentials grant against token_endpoint_url;
    # "aws_msk_iam" = a token signed with the pod's AWS credentials (needs the `aws` extra).
    oauthbearer_method: Literal["oidc", "aws_msk_iam"] = "oidc"
    token_endpoint_url: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    client_secret_file: str = ""
    scope: str = ""
    # e.g. "logicalCluster=lkc-abc12,identityPoolId=pool-XyZ" (Confluent Cloud OAuth)
    extensions: str = ""
    aws_region: str = ""

    @model_validator(mode="after")
    def _files(self) -> SaslConfig:
        load_secret_file(self, "password")
        load_secret_file(self, "client_secret")
        return self


class KafkaSecurityConfig(_Section):
    protocol: Protocol = "PLAINTEXT"
    sasl: SaslConfig = SaslConfig()
    # TLS (protocol SSL / SASL_SSL): CA bundle to trust (default: the system's), client certificate
    # and key for mTLS, the key's password.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    key_password: SecretStr = SecretStr("")
    key_password_file: str = ""
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _check(self) -> KafkaSecurityConfig:
        load_secret_file(self, "key_password")
        tls = self.protocol in ("SSL", "SASL_SSL")
        sasl = self.protocol.startswith("SASL_")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not tls:
                raise ValueError(f"{key} needs protocol SSL or SASL_SSL (protocol is {self.protocol})")
            if path and not Path(path).is_file():
                raise ValueError(f"{key} {path!r} is not a readable file")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        s = self.sasl
        if not sasl:
            if s.username or s.password.get_secret_value() or s.client_id or s.oauthbearer_method != "oidc":
                raise ValueError(f"sasl settings need protocol SASL_PLAINTEXT or SASL_SSL (protocol is {self.protocol})")
            return self
        if s.mechanism != "OAUTHBEARER":
            if not s.username:
                raise ValueError(f"sasl.username is required for {s.mechanism}")
            if not s.password.get_secret_value():
                raise ValueError(f"sasl.password is required for {s.mechanism} (set "
                                 "CAPILLARY_AEP__KAFKA__SECURITY__SASL__PASSWORD or kafka.security.sasl.password_file)")
        elif s.oauthbearer_method == "oidc":
            missing = [k for k in ("token_endpoint_url", "client_id") if not getattr(s, k)]
            if not s.client_secret.get_secret_value():
                missing.append("client_secret")
            if missing:
                raise ValueError(f"OAUTHBEARER (oidc) needs sasl.{', sasl.'.join(missing)}")
        else:
            if not s.aws_region:
                raise ValueError("sasl.aws_region is required for aws_msk_iam")
            if importlib.util.find_spec("aws_msk_iam_sasl_signer") is None:
                raise ValueError("sasl.oauthbearer_method aws_msk_iam needs the `aws` extra "
                                 "(pip install 'capillary-aep-connector[aws]')")
        return self


def security_properties(sec: KafkaSecurityConfig) -> dict[str, Any]:
    """librdkafka properties for ``sec`` (secrets in clear: hand this only to librdkafka)."""
    conf: dict[str, Any] = {"security.protocol": sec.protocol}
    if sec.protocol in ("SSL", "SASL_SSL"):
        if sec.ca_file:
            conf["ssl.ca.location"] = sec.ca_file
        if sec.cert_file:
            conf["ssl.certificate.location"] = sec.cert_file
            conf["ssl.key.location"] = sec.key_file
        if sec.key_password.get_secret_value():
            conf["ssl.key.password"] = sec.key_password.get_secret_value()
        conf["ssl.endpoint.identification.algorithm"] = "https" if sec.verify_hostname else "none"
    if not sec.protocol.startswith("SASL_"):
        return conf
    s = sec.sasl
    conf["sasl.mechanism"] = s.mechanism
    if s.mechanism != "OAUTHBEARER":
        conf["sasl.username"] = s.username
        conf["sasl.password"] = s.password.get_secret_value()
    elif s.oauthbearer_method == "oidc":
        conf.update({
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.token.endpoint.url": s.token_endpoint_url,
            "sasl.oauthbearer.client.id": s.client_id,
            "sasl.oauthbearer.client.secret": s.client_secret.get_secret_value(),
        })
        if s.scope:
            conf["sasl.oauthbearer.scope"] = s.scope
        if s.extensions:
            conf["sasl.oauthbearer.extensions"] = s.extensions
    else:
        conf["oauth_cb"] = msk_iam_token_callback(s.aws_region)
    return conf


def msk_iam_token_callback(region: str) -> Callable[[str | None], tuple[str, float]]:
    """librdkafka's ``oauth_cb`` for MSK IAM: (token, expiry in epoch seconds), from the AWS
    credential chain of the process (IRSA / instance role / environment)."""

    def callback(_config: str | None) -> tuple[str, float]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # optional `aws` extra

        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
        return token, expiry_ms / 1000.0

    return callback


def secret_values(sec: KafkaSecurityConfig) -> list[str]:
    """The secrets of ``sec``, for :func:`connector.telemetry.logs.register_secret`."""
    return [v.get_secret_value() for v in (sec.sasl.password, sec.sasl.client_secret, sec.key_password)
            if v.get_secret_value()]
