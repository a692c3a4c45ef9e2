"""``identityMap`` from Capillary's ``customerIdentifiers`` (capillary-events.md C.1, aep-streaming-api.md §6.3).

* The Capillary customer id (the only identifier on every event) is the primary identity, in a
  custom namespace; if an event has none, the first other identifier becomes primary.
* Email, phone, external id and card numbers are added when identifier enrichment supplied them.
  With ``pii_mode = "sha256"`` email (trimmed, lower-cased) and phone (digits only, no leading
  zeros) are hashed into the SHA-256 namespaces and never sent in clear.
* At most 20 identities per record; ids are strings; ``authenticatedState`` from configuration.

AEP's ingestion guardrails (aep-streaming-api.md §5/§6.3): Identity Service skips a record whose
identity value is longer than 1,024 characters, blocks the values "null", "anonymous", "invalid"
and blank ones, and takes at most 20 identities. Nothing AEP would silently skip is sent: an
offending *non-primary* identity is dropped (reported in ``dropped``, which the pipeline counts in
``capillary_aep_identities_dropped_total``), and a record whose *primary* identity offends raises
``TransformError("identity_rejected")`` (dead letter).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.config import IdentityConfig
from connector.transform.errors import TransformError
from connector.transform.values import email, id_str, phone_digits, text

MAX_IDENTITIES = 20
MAX_IDENTITY_LENGTH = 1_024
BLOCKED_VALUES = frozenset({"null", "anonymous", "invalid", ""})


def identity_offence(value: str) -> str | None:
    """Why AEP's Identity Service would skip this identity value, or None."""
    if len(value) > MAX_IDENTITY_LENGTH:
        return "too_long"
    if value.strip().lower() in BLOCKED_VALUES:
        return "blocked_value"
    return None


@dataclass(frozen=True, slots=True)
class Contact:
    """Clear-text contact details for the profile (only in ``plain`` PII mode)."""

    email: str | None
    phone: str | None


class IdentityMapper:
    def __init__(self, cfg: IdentityConfig) -> None:
        self._state = cfg.authenticated_state
        self._customer_ns = cfg.customer_id_namespace
        self._external_ns = cfg.external_id_namespace
        self._card_ns = cfg.card_namespace
        self._hash = cfg.pii_mode == "sha256"
        self._email_ns = cfg.email_sha256_namespace if self._hash else cfg.email_namespace
        self._phone_ns = cfg.phone_sha256_namespace if self._hash else cfg.phone_namespace
        self.dropped: list[str] = []  # reasons of identities dropped by the last identity_map() call

    @property
    def hashes_pii(self) -> bool:
        return self._hash

    @property
    def email_namespace(self) -> str:
        """Where an email identity goes (the SHA-256 namespace when hashing)."""
        return self._email_ns

    @property
    def phone_namespace(self) -> str:
        return self._phone_ns

    def customer_id(self, ci: Mapping[str, Any] | None) -> str | None:
        return id_str(ci.get("customerId")) if ci is not None else None

    def identity_map(
        self, ci: Mapping[str, Any] | None, linked_customer_ids: tuple[str, ...] = ()
    ) -> dict[str, list[dict[str, Any]]] | None:
        """The identityMap of one customer, or None if the event identifies nobody.

        ``linked_customer_ids`` are further Capillary ids of the same person (a merge's victim): they
        go in the customer namespace as non-primary identities, which links them in the identity graph.
        """
        dropped: list[str] = []
        self.dropped = dropped
        if ci is None:
            return None
        pairs: list[tuple[str, str]] = []
        cid = id_str(ci.get("customerId"))
        if cid is not None:
            pairs.append((self._customer_ns, cid))
        for linked in linked_customer_ids:
            pairs.append((self._customer_ns, linked))
        instore = ci.get("instore")
        if not isinstance(instore, dict):
            instore = _EMPTY
        external = text(instore.get("externalId"))
        if external is not None:
            pairs.append((self._external_ns, external))
        address = email(instore.get("email"))
        if address is not None:
            pairs.append((self._email_ns, _sha256(address) if self._hash else address))
        digits = phone_digits(instore.get("mobile"))
        if digits is not None:
            pairs.append((self._phone_ns, _sha256(digits) if self._hash else digits))
        for card in _cards(ci, instore):
            pairs.append((self._card_ns, card))
        if not pairs:
            return None
        offence = identity_offence(pairs[0][1])
        if offence is not None:
            # AEP would skip the whole record: it is a dead letter, not something to send.
            raise TransformError("identity_rejected", f"primary identity ({pairs[0][0]}): {offence}")
        state = self._state
        ns, value = pairs[0]
        out: dict[str, list[dict[str, Any]]] = {ns: [{"id": value, "authenticatedState": state, "primary": True}]}
        if len(pairs) > 1:
            seen = {pairs[0]}
            for i, pair in enumerate(pairs[1:], start=1):
                if pair in seen:
                    continue
                offence = identity_offence(pair[1])
                if offence is not None:
                    dropped.append(offence)
                    continue
                if len(seen) == MAX_IDENTITIES:
                    dropped.extend(["too_many"] * len({p for p in pairs[i:] if p not in seen}))
                    break
                seen.add(pair)
                item = {"id": pair[1], "authenticatedState": state}
                bucket = out.get(pair[0])
                if bucket is None:
                    out[pair[0]] = [item]
                else:
                    bucket.append(item)
        return out

    def contact(self, ci: Mapping[str, Any] | None) -> Contact | None:
        """Email/phone for the profile's contact fields; None in sha256 mode (no clear-text PII)."""
        if self._hash or ci is None:
            return None
        instore = ci.get("instore")
        if not isinstance(instore, dict):
            return None
        address = email(instore.get("email"))
        digits = phone_digits(instore.get("mobile"))
        if address is None and digits is None:
            return None
        return Contact(address, digits)



_EMPTY: Mapping[str, Any] = {}


def card_numbers(ci: Mapping[str, Any] | None) -> list[str]:
    """Every distinct card number of a customer (``instore.cardnumber``, ``card_number``, ``cardNumbers``)."""
    if ci is None:
        return []
    instore = ci.get("instore")
    return _cards(ci, instore if isinstance(instore, dict) else _EMPTY)


def _cards(ci: Mapping[str, Any], instore: Mapping[str, Any]) -> list[str]:
    cards: list[str] = []
    for value in (instore.get("cardnumber"), ci.get("card_number")):
        card = text(value)
        if card is not None and card not in cards:
            cards.append(card)
    many = instore.get("cardNumbers")
    if type(many) is list:
        for value in many:
            card = text(value)
            if card is not None and card not in cards:
                cards.append(card)
    return cards


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
