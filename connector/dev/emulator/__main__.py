"""``python -m connector.dev.emulator``: run the emulator with the demo configuration (or a file
whose keys override it)."""

from __future__ import annotations

import argparse
from typing import Any

from connector.dev.emulator.app import serve
from connector.dev.emulator.config import EmulatorConfig, demo_config, load_config


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    overrides: dict[str, Any] = {}
    if args.token_ttl is not None:
        overrides["token_ttl_s"] = args.token_ttl
    if args.failure_style is not None:
        overrides["batch_failure_style"] = args.failure_style
    if args.store_bodies is not None:
        overrides["store_bodies"] = args.store_bodies
    if args.max_stored_messages is not None:
        overrides["max_stored_messages"] = args.max_stored_messages
    if args.null_check is not None:
        overrides["check_null_or_empty"] = args.null_check
    if args.strict:
        overrides["strict_schemas"] = True
    if args.tenant is not None:
        overrides["tenant_id"] = args.tenant
    if args.page_size is not None:
        overrides["platform_page_size"] = args.page_size
    if args.registry_authorization is not None:
        overrides["registry_authorization"] = args.registry_authorization
    cfg = load_config(args.config, **overrides) if args.config else demo_config(**overrides)
    if args.no_auth:
        for inlet in cfg.inlets:
            inlet.authentication_required = False
    return cfg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m connector.dev.emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token-ttl", type=float, default=None, metavar="S", help="IMS token lifetime in seconds")
    p.add_argument("--failure-style", choices=["docs", "v2024"], default=None,
                   help="shape of failed entries in 207 responses")
    p.add_argument("--no-auth", action="store_true", help="inlets do not require a bearer token")
    p.add_argument("--config", default=None, metavar="FILE", help="JSON or TOML file overriding the demo config")
    p.add_argument("--store-bodies", action=argparse.BooleanOptionalAction, default=None,
                   help="keep accepted envelopes for /__emulator/messages (default: on)")
    p.add_argument("--max-stored-messages", type=int, default=None, metavar="N")
    p.add_argument("--null-check", action=argparse.BooleanOptionalAction, default=None,
                   help="count null/empty values in xdmEntity (default: on)")
    p.add_argument("--strict", action="store_true",
                   help="reject inlet messages that do not validate against their dataset's schema "
                        "(datasets created through the emulated Platform APIs, or with a json_schema)")
    p.add_argument("--tenant", default=None, metavar="ID", help="tenant id of the emulated Schema Registry "
                   "(default: capillary)")
    p.add_argument("--page-size", type=int, default=None, metavar="N",
                   help="items per page of the Platform API lists (default: 20)")
    p.add_argument("--registry-authorization", default=None, metavar="VALUE",
                   help='Schema Registry requires this Authorization header ("Basic …" or "Bearer …")')
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate (chain)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's key")
    p.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="require client certificates issued by this CA (mutual TLS)")
    return p


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    if not args.tls_cert:
        return {}
    import ssl

    opts: dict[str, Any] = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    if args.tls_client_ca:
        opts.update(ssl_ca_certs=args.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return opts


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    serve(build_config(args), host=args.host, port=args.port, **tls_options(args))


if __name__ == "__main__":
    main()
