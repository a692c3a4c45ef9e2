"""Per-event mappings (capillary-events.md C.2): one small builder per Capillary event name.

A builder reads the event's ``data`` and writes into a :class:`Draft`:

* ``entity``: standard ExperienceEvent fields (Commerce Details, Loyalty Event Details);
* ``tenant``: everything XDM has no place for, under ``_<tenant>.capillary`` (Capillary's field names);
* ``loyalty`` / ``person`` / ``contact``: the partial Individual Profile the event knows about.

Common parts (``_id``, ``timestamp``, identityMap, lineage fields, store) are done once by
:mod:`connector.transform.transformer`. Builders only ever write non-empty values (``put``), so no
output needs a null-stripping pass. Scalar tenant fields are copied by tables of
``(field, converter)`` pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connector.transform.identity import card_numbers
from connector.transform.programs import ProgramCache
from connector.transform.times import to_date, to_iso
from connector.transform.values import (
    boolean,
    clean,
    compact_json,
    currency,
    id_str,
    int_or_none,
    key_values,
    num,
    put,
    string_map,
    text,
)

Converter = Callable[[Any], Any]
Fields = tuple[tuple[str, Converter], ...]


class Draft:
    """What one event contributes to its XDM records; filled by the builders."""

    __slots__ = ("data", "event_type", "timestamp", "programs", "entity", "tenant", "loyalty", "person",
                 "profile_tenant", "program_id", "profile_wanted", "email_update", "mobile_update", "hash_pii")

    def __init__(self, data: Mapping[str, Any], event_type: str, timestamp: str, programs: ProgramCache,
                 hash_pii: bool = False) -> None:
        self.data = data
        self.event_type = event_type
        self.timestamp = timestamp
        self.entity: dict[str, Any] = {}
        self.tenant: dict[str, Any] = {}
        self.loyalty: dict[str, Any] = {}
        self.programs = programs
        self.person: dict[str, Any] = {}  # profile "person" field (names)
        self.profile_tenant: dict[str, Any] = {}
        self.program_id: str | None = None
        self.profile_wanted = False  # set by events that always update the profile (enrolment)
        # New contact details from customerUpdated.updatedFields; the transformer applies the PII mode.
        self.email_update: str | None = None
        self.mobile_update: str | None = None
        self.hash_pii = hash_pii  # pii_mode "sha256": no clear-text email/phone anywhere in the output

    def tier_name(self, program_id: str | None, number: int) -> str | None:
        program = self.programs.get(program_id)
        return program.tiers.get(number) if program is not None else None

    def commerce(self) -> dict[str, Any]:
        commerce = self.entity.get("commerce")
        if commerce is None:
            commerce = self.entity["commerce"] = {}
        return commerce

    def ee_loyalty(self) -> dict[str, Any]:
        loyalty = self.entity.get("loyalty")
        if loyalty is None:
            loyalty = self.entity["loyalty"] = {}
        return loyalty


Builder = Callable[[Draft, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class EventSpec:
    name: str
    event_type: str
    build: Builder
    # Where the event's customer is: the data key of its customerIdentifiers (None: see CouponIssue).
    identity_key: str | None = "customerIdentifiers"
    profile: bool = False  # may carry profile state
    contact: bool = False  # the profile update also carries names and contact details (customer events)
    # The event's tenant fields (``_<tenant>.capillary``), declared once: ``tenant`` is copied from the
    # data by the transformer before ``build`` runs; ``computed`` the builder writes itself (the converter
    # names the XDM type). connector.transform.tenant derives the field groups and the closed
    # pre-flight schema from these, so a field the builder writes undeclared fails validation.
    tenant: Fields = ()
    computed: Fields = ()


def copy_fields(target: dict[str, Any], data: Mapping[str, Any], fields: Fields) -> None:
    for key, convert in fields:
        value = data.get(key)
        if value is not None:
            value = convert(value)
            if value is not None:
                target[key] = value


def records_of(fields: Fields) -> Converter:
    """Converter for a list of records whose scalar fields are copied by ``fields``."""

    def convert(items: Any) -> list[dict[str, Any]] | None:
        if type(items) is not list:
            return None
        out = []
        for item in items:
            if isinstance(item, dict):
                row: dict[str, Any] = {}
                copy_fields(row, item, fields)
                if row:
                    out.append(row)
        return out or None

    convert.xdm_shape = ("array", fields)  # type: ignore[attr-defined] # read by connector.transform.tenant
    return convert


def record_of(fields: Fields) -> Converter:
    def convert(item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            return None
        row: dict[str, Any] = {}
        copy_fields(row, item, fields)
        return row or None

    convert.xdm_shape = ("object", fields)  # type: ignore[attr-defined] # read by connector.transform.tenant
    return convert


# A counterpart customer (transfer partner, merge victim) by Capillary id only: no PII in tenant fields.
_customer_ref = record_of((("customerId", id_str),))


# --- helpers shared by several events ------------------------------------------------------------

_BILL_KEYS = ("BillId", "billId", "billNumber", "BillNumber", "TransactionId", "transactionId")


def triggering_bill(data: Mapping[str, Any]) -> str | None:
    """The bill/transaction id named in ``triggeringActivity.identifiers`` (first of ``_BILL_KEYS``)."""
    ta = data.get("triggeringActivity")
    if not isinstance(ta, dict):
        return None
    identifiers = ta.get("identifiers")
    if type(identifiers) is not list:
        return None
    found: dict[str, str] = {}
    for item in identifiers:
        if isinstance(item, dict):
            key = item.get("key")
            if key in _BILL_KEYS:
                value = text(item.get("value"))
                if value is not None:
                    found.setdefault(key, value)
    for key in _BILL_KEYS:
        if key in found:
            return found[key]
    return None


def _points_entry(value: Any, program_id: str | None, transaction_id: str | None,
                  promotion_id: str | None = None) -> dict[str, Any] | None:
    amount = num(value)
    if amount is None:
        return None
    entry: dict[str, Any] = {"value": amount}
    put(entry, "promotionId", promotion_id)
    put(entry, "loyaltyProgramId", program_id)
    put(entry, "transactionId", transaction_id)
    return entry


def _balances(draft: Draft, points: Any = None, lifetime: Any = None) -> None:
    put(draft.loyalty, "points", num(points))
    put(draft.loyalty, "lifetimePoints", num(lifetime))


def _program_points(items: Any, program_id: str | None, key: str = "programCurrentPoints") -> Any:
    """``programCurrentPoints`` of the entry for ``program_id`` (or of the only entry) in a per-program list."""
    if type(items) is not list:
        return None
    rows = [i for i in items if isinstance(i, dict)]
    for row in rows:
        if program_id is not None and id_str(row.get("programId")) == program_id:
            return row.get(key)
    return rows[0].get(key) if len(rows) == 1 else None


def _tier(draft: Draft, number_key: str, *, tenant_name_key: str) -> None:
    """Profile tier from a tier number; the number (and name, when known) also go to the tenant block."""
    number = int_or_none(draft.data.get(number_key))
    if number is None:
        return
    name = draft.tier_name(draft.program_id, number)
    put(draft.tenant, tenant_name_key, name)
    put(draft.loyalty, "tier", name)
    if name is None:  # keep the number where a later lookup can still resolve it
        draft.profile_tenant["tierNumber"] = number


def _tier_expiry(draft: Draft) -> None:
    data = draft.data
    expiry = to_iso(data.get("tierExpiryDateInMillis")) or to_iso(data.get("tierExpiryDate"))
    put(draft.loyalty, "tierExpiryDate", expiry)


# --- field tables ---------------------------------------------------------------------------------

_KV = key_values
PROMOTIONAL_POINTS: Fields = (
    ("promotionName", text), ("promotionIdentifier", id_str), ("promotionType", text),
    ("promotionPoints", num), ("promotionPointsExpiryDate", to_date),
)
CUSTOMER_FIELDS: Fields = (
    ("loyaltyType", text), ("source", text), ("accountId", id_str), ("enteredAt", to_iso),
    ("customFields", _KV), ("extendedFields", _KV),
)
TRANSACTION_FIELDS: Fields = (
    ("transactionId", id_str), ("billNumber", text), ("billClientId", text), ("billDate", to_iso),
    ("billType", text), ("amount", num), ("grossAmount", num), ("discount", num), ("deliveryStatus", text),
    ("lineItemCount", int_or_none), ("outlierStatus", text), ("enteredAt", to_iso),
    ("customFields", _KV), ("extendedFields", _KV),
)
POINTS_ISSUED_FIELDS: Fields = (
    ("totalPointsIssued", num), ("regularPointsIssued", num), ("programCurrentPoints", num),
    ("programLifetimePoints", num), ("AvailablePointsBalance", num),
    ("regularPointsBreakup", records_of((("points", num), ("expiryAt", to_date)))),
    ("promotionalPointsIssued", records_of(PROMOTIONAL_POINTS)),
    ("promisedPointsIssued", records_of((
        ("promisedPoints", num), ("isExternalTriggerBased", boolean),
        ("promisedPointsConversionDate", to_date), ("promotionIdentifier", id_str)))),
    ("behavioralEventAttributes", string_map),
)
EARNING_PROGRAMS = records_of((("programId", id_str), ("pointsRedeemed", num), ("programCurrentPoints", num)))
TIER_FIELDS: Fields = (
    ("previousTierNumber", int_or_none), ("upgradedTierNumber", int_or_none), ("downgradedTierNumber", int_or_none),
    ("currentTierNumber", int_or_none), ("tierExpiryDate", to_date), ("tierExpiryDateInMillis", to_iso),
    ("currentDateStoreTz", to_date), ("notes", text), ("upgradeType", text), ("downgradeType", text),
    ("renewType", text), ("scheduledDowngradeDate", to_date),
)
SERIES_INFO = record_of((
    ("id", id_str), ("description", text), ("seriesType", text), ("clientHandlingType", text),
    ("valid_till", to_iso), ("discount_code", text), ("discount_type", text), ("discount_value", num),
))
RESTRICTIONS = records_of((("limitOn", text), ("kpi", text), ("restrictionType", text), ("maxLimit", num)))


POINTS_REDEEMED_FIELDS: Fields = (
        ("totalPointsRedeemed", num), ("redemptionSummaryId", id_str), ("redeemedPointsCurrencyValue", num),
        ("redemptionNotes", text), ("redemptionBillNumber", text), ("isGroupRedemption", boolean),
        ("redemptionFromEarningPrograms", EARNING_PROGRAMS), ("AvailablePointsBalance", num),
    )
POINTS_EXPIRED_FIELDS: Fields = (("pointsExpired", num), ("AvailablePointsBalance", num))
POINTS_EXPIRY_REMINDER_FIELDS: Fields = (("pointsScheduledForExpiry", num), ("scheduledExpiryDate", to_date))
POINTS_EXPIRY_CHANGE_FIELDS: Fields = (("updatedPointsExpiryBreakup", records_of((
        ("pointAwardedRefID", id_str), ("pointsAwardedRefType", text), ("promotionID", id_str), ("points", num),
        ("pointsPreviousExpiryDate", to_date), ("expiryUpdateReasonType", text), ("expiryUpdateReasonNote", text),
        ("newExpiryDate", to_date), ("newExpirySetType", text),
    ))),)
PROMOTION_EARNED_FIELDS: Fields = (
        ("promotionId", id_str), ("promotionName", text), ("promotionDescription", text),
        ("promotionStartDate", to_iso), ("promotionEndDate", to_iso), ("promotionEarnedDate", to_date),
        ("promotionEarnedExpiryDate", to_date), ("pointsOfferType", text), ("customFields", _KV),
        ("issualId", id_str), ("earnedId", id_str), ("earnRestrictions", RESTRICTIONS),
        ("redemptionRestrictions", RESTRICTIONS), ("promotionEarnSource", text),
    )
COUPON_ISSUE_FIELDS: Fields = (("addedAt", to_iso), ("issualType", text), ("series_info", SERIES_INFO))
COUPON_REDEEM_FIELDS: Fields = (("addedAt", to_iso),)
REWARD_ISSUED_FIELDS: Fields = (
        ("rewardId", id_str), ("type", text), ("redemptionType", text), ("startDate", to_iso), ("endDate", to_iso),
        ("intouchPoints", num), ("intouchSeriesId", id_str), ("priority", int_or_none), ("tier", text),
        ("group", text), ("label", text), ("transactionId", id_str),
        ("vendorRewardDetails", record_of((("vendorVoucher", text),))),
        ("intouchRewardDetails", record_of((("intouchCouponCode", text), ("codeExpiry", to_iso)))),
        ("issueDateTime", to_iso), ("eventDateTime", to_iso),
    )
ISSUED_POINTS_REVERSED_FIELDS: Fields = (
        ("programCurrentPoints", num), ("programLifetimePoints", num), ("totalIssuedPointsReversed", num),
        ("regularPointsReversed", num), ("promisedPointsReversed", num),
        ("promotionalPointsReversed", records_of(PROMOTIONAL_POINTS)),
    )
REDEEMED_POINTS_REVERSED_FIELDS: Fields = (
        ("redeemedPointsReversed", num), ("redemptionSummaryId", id_str),
        ("redeemedPointsReversedDetails", record_of((("available", num), ("expired", num)))),
        ("redemptionReversalToEarningPrograms", records_of((
            ("programId", id_str), ("pointsReversed", num), ("programCurrentPoints", num)))),
    )
MANUAL_POINTS_ADJUSTMENT_FIELDS: Fields = (
        ("totalPointsDeducted", num), ("reason", text),
        ("programPointsSplit", records_of((
            ("pointsAwardedId", id_str), ("programId", id_str), ("points", num), ("pointsType", text)))),
    )
POINTS_TRANSFERRED_INITIATED_FIELDS: Fields = (
        ("totalPointsTransferred", num), ("transferReceivingCustomerIdentifiers", _customer_ref),
        ("redemptionFromEarningPrograms", EARNING_PROGRAMS),
    )
POINTS_TRANSFERRED_RECEIVED_FIELDS: Fields = (
        ("totalPointsTransferred", num), ("transferInitiatingCustomerIdentifiers", _customer_ref),
        ("programCurrentPoints", num), ("programLifetimePoints", num),
    )
CARD_UPDATED_FIELDS: Fields = (
        ("cardNumber", text), ("previousStatusLabel", text), ("currentStatusLabel", text),
        ("previousExtendedFields", _KV), ("currentExtendedFields", _KV),
        ("previousCustomFields", _KV), ("currentCustomFields", _KV),
    )
LOYALTY_CUSTOMER_MERGE_FIELDS: Fields = (
        ("survivorCustomerIdentifiers", _customer_ref), ("victimCustomerIdentifiers", _customer_ref),
        ("survivorCustomerLoyaltySummary", records_of((
            ("loyaltyProgramId", id_str), ("lifetimePoints", num), ("currentPoints", num),
            ("promisedPoints", num), ("tierNumber", int_or_none)))),
    )

# --- builders -------------------------------------------------------------------------------------


def fields_only(draft: Draft, data: Mapping[str, Any]) -> None:
    """Events whose whole mapping is their declared tenant fields (copied by the transformer)."""


def customer_added(draft: Draft, data: Mapping[str, Any]) -> None:
    draft.profile_wanted = True  # enrolment: the profile exists from now on, even with identities only
    _customer_profile(draft, data)
    put(draft.loyalty, "joinDate", to_iso(data.get("enteredAt")) or draft.timestamp)


def customer_updated(draft: Draft, data: Mapping[str, Any]) -> None:
    changes = _UPDATED_FIELDS(data.get("updatedFields"))
    if changes is not None and draft.hash_pii:
        for change in changes:
            if change.get("fieldName", "").lower() in _CONTACT_FIELDS:
                change.pop("previousValue", None)
                change.pop("currentValue", None)
    put(draft.tenant, "updatedFields", changes)
    put(draft.tenant, "customerStatus", _CUSTOMER_STATUS(data.get("customerStatus")))
    _customer_profile(draft, data)
    updated = data.get("updatedFields")
    if type(updated) is list:
        for change in updated:
            if isinstance(change, dict):
                target = _STANDARD_FIELD_TARGETS.get(str(change.get("fieldName", "")).strip().lower())
                value = text(change.get("currentValue"))
                if target is not None and value is not None:
                    target(draft, value)
    status = data.get("customerStatus")
    if isinstance(status, dict):
        put(draft.loyalty, "status", text(status.get("currentLabel")) or text(status.get("currentStatus")))


_UPDATED_FIELDS = records_of((
    ("fieldName", text), ("previousValue", text), ("currentValue", text), ("fieldType", text),
    ("source", text), ("accountId", id_str),
))
_CUSTOMER_STATUS = record_of((
    ("previousStatus", text), ("previousLabel", text), ("currentStatus", text), ("currentLabel", text),
    ("reason", text),
))
_CONTACT_FIELDS = frozenset({"email", "mobile", "phone"})
LOYALTY_STATUS = {"LOYALTY": "active", "NON_LOYALTY": "notEnrolled"}


def _customer_profile(draft: Draft, data: Mapping[str, Any]) -> None:
    ci = data.get("customerIdentifiers")
    ci = ci if isinstance(ci, dict) else {}
    _set_name(draft, "firstName", text(data.get("firstName")) or text(ci.get("firstName")))
    _set_name(draft, "lastName", text(data.get("lastName")) or text(ci.get("lastName")))
    loyalty_type = text(data.get("loyaltyType")) or text(ci.get("loyaltyType"))
    if loyalty_type is not None:
        put(draft.loyalty, "status", LOYALTY_STATUS.get(loyalty_type.upper()))
    cid = id_str(ci.get("customerId"))
    if cid is not None:
        draft.loyalty["loyaltyID"] = [cid]
    cards = card_numbers(ci)
    if cards:  # with card enrichment the event lists all the customer's cards, so the array is complete
        draft.loyalty["cardsDetails"] = [{"number": card} for card in cards]


def _set_name(draft: Draft, key: str, value: str | None) -> None:
    if value is not None:
        draft.person.setdefault("name", {})[key] = value


def _set_email(draft: Draft, value: str) -> None:
    draft.email_update = value


def _set_mobile(draft: Draft, value: str) -> None:
    draft.mobile_update = value


_STANDARD_FIELD_TARGETS: dict[str, Callable[[Draft, str], None]] = {
    "firstname": lambda d, v: _set_name(d, "firstName", v),
    "first_name": lambda d, v: _set_name(d, "firstName", v),
    "lastname": lambda d, v: _set_name(d, "lastName", v),
    "last_name": lambda d, v: _set_name(d, "lastName", v),
    "email": _set_email,
    "mobile": _set_mobile,
}


def transaction_added(draft: Draft, data: Mapping[str, Any]) -> None:
    bill_type = (text(data.get("billType")) or "").upper()
    amount = num(data.get("amount"))
    code = currency(data.get("currencyCode"))
    order: dict[str, Any] = {}
    commerce = draft.commerce()
    if bill_type == "RETURN":
        draft.event_type = "commerce.returns"
        bill = text(data.get("billNumber")) or id_str(data.get("transactionId"))
        if bill is not None:
            order["returns"] = {"returnID": bill}
        if amount is not None:
            refund: dict[str, Any] = {"refundAmount": abs(amount), "refundReason": "return"}
            put(refund, "currencyCode", code)
            order["refunds"] = [refund]
            order["refundTotal"] = abs(amount)
    else:
        put(order, "purchaseID", text(data.get("billNumber")) or id_str(data.get("transactionId")))
        put(order, "priceTotal", amount)
        put(order, "discountAmount", num(data.get("discount")))
        commerce["purchases"] = {"value": 1}
    put(order, "currencyCode", code)
    put(order, "createdDate", to_iso(data.get("enteredAt")) or to_iso(data.get("billDate")))
    if order:
        commerce["order"] = order


def transaction_updated(draft: Draft, data: Mapping[str, Any]) -> None:
    order: dict[str, Any] = {}
    put(order, "purchaseID", text(data.get("billNumber")) or id_str(data.get("transactionId")))
    put(order, "priceTotal", num(data.get("amount")))
    put(order, "currencyCode", currency(data.get("currencyCode")))
    order["lastUpdatedDate"] = draft.timestamp
    draft.commerce()["order"] = order


def points_issued(draft: Draft, data: Mapping[str, Any]) -> None:
    bill = triggering_bill(data)
    program_id = draft.program_id
    gained = []
    promotions = data.get("promotionalPointsIssued")
    promotions = [p for p in promotions if isinstance(p, dict)] if type(promotions) is list else []
    regular = data.get("regularPointsIssued")
    if regular is None and not promotions:
        regular = data.get("totalPointsIssued")
    if regular is not None and (num(regular) or not promotions):
        entry = _points_entry(regular, program_id, bill)
        if entry is not None:
            gained.append(entry)
    for promotion in promotions:
        entry = _points_entry(promotion.get("promotionPoints"), program_id, bill,
                              id_str(promotion.get("promotionIdentifier")))
        if entry is not None:
            gained.append(entry)
    if gained:
        draft.ee_loyalty()["pointsGained"] = gained
    _balances(draft, data.get("programCurrentPoints") if data.get("programCurrentPoints") is not None
              else data.get("AvailablePointsBalance"), data.get("programLifetimePoints"))


def points_redeemed(draft: Draft, data: Mapping[str, Any]) -> None:
    transaction = text(data.get("redemptionBillNumber")) or triggering_bill(data)
    if transaction is None:
        transaction = _identifier(data, ("redemptionId",))
    loyalty = draft.ee_loyalty()
    entry = _points_entry(data.get("totalPointsRedeemed"), draft.program_id, transaction)
    if entry is not None:
        loyalty["pointsRedemption"] = [entry]
    value = num(data.get("redeemedPointsCurrencyValue"))
    if value is not None:
        loyalty["discounts"] = [{"value": value, "source": "pointsRedemption"}]
    if not loyalty:
        del draft.entity["loyalty"]
    current = _program_points(data.get("redemptionFromEarningPrograms"), draft.program_id)
    _balances(draft, current if current is not None else data.get("AvailablePointsBalance"))


def _identifier(data: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    ta = data.get("triggeringActivity")
    identifiers = ta.get("identifiers") if isinstance(ta, dict) else None
    if type(identifiers) is list:
        for item in identifiers:
            if isinstance(item, dict) and item.get("key") in keys:
                return text(item.get("value"))
    return None


def points_expired(draft: Draft, data: Mapping[str, Any]) -> None:
    _balances(draft, data.get("AvailablePointsBalance"))  # the payload has no balance otherwise


def tier_upgraded(draft: Draft, data: Mapping[str, Any]) -> None:
    _previous_tier_name(draft)
    _tier(draft, "upgradedTierNumber", tenant_name_key="upgradedTierName")
    draft.loyalty["tierUpgradeDate"] = draft.timestamp
    _tier_expiry(draft)


def tier_downgraded(draft: Draft, data: Mapping[str, Any]) -> None:
    _previous_tier_name(draft)
    _tier(draft, "downgradedTierNumber", tenant_name_key="downgradedTierName")
    _tier_expiry(draft)


def tier_renewed(draft: Draft, data: Mapping[str, Any]) -> None:
    _tier(draft, "currentTierNumber", tenant_name_key="currentTierName")
    _tier_expiry(draft)


def tier_downgrade_reminder(draft: Draft, data: Mapping[str, Any]) -> None:
    number = int_or_none(data.get("currentTierNumber"))
    if number is not None:
        put(draft.tenant, "currentTierName", draft.tier_name(draft.program_id, number))


def _previous_tier_name(draft: Draft) -> None:
    number = int_or_none(draft.data.get("previousTierNumber"))
    if number is not None:
        put(draft.tenant, "previousTierName", draft.tier_name(draft.program_id, number))


def coupon_issue(draft: Draft, data: Mapping[str, Any]) -> None:
    coupons = data.get("coupons")
    coupons = [c for c in coupons if isinstance(c, dict)] if type(coupons) is list else []
    put(draft.tenant, "coupons", _ISSUED_COUPONS(coupons))
    series = data.get("series_info")
    series = series if isinstance(series, dict) else {}
    profile_coupons = []
    for coupon in coupons:
        row: dict[str, Any] = {}
        put(row, "id", text(coupon.get("code")) or id_str(coupon.get("id")))
        put(row, "series", id_str(series.get("id")))
        put(row, "name", text(series.get("description")))
        put(row, "discountValue", num(series.get("discount_value")))
        put(row, "startDate", to_iso(coupon.get("issued_on")))
        put(row, "endDate", to_iso(coupon.get("valid_till")) or to_iso(series.get("valid_till")))
        if row:
            row["state"] = "active"
            profile_coupons.append(row)
    if profile_coupons:
        draft.loyalty["rewards"] = {"coupons": profile_coupons}


_ISSUED_COUPONS = records_of((("id", id_str), ("code", text), ("valid_till", to_iso), ("issued_on", to_iso)))


def coupon_redeem(draft: Draft, data: Mapping[str, Any]) -> None:
    coupon = data.get("coupon")
    coupon = coupon if isinstance(coupon, dict) else {}
    series = coupon.get("series_info")
    series = series if isinstance(series, dict) else {}
    put(draft.tenant, "coupon", _REDEEMED_COUPON(coupon))
    put(draft.tenant, "series_info", SERIES_INFO(series))
    transaction = data.get("transaction")
    transaction = transaction if isinstance(transaction, dict) else {}
    bill_id = id_str(transaction.get("bill_id"))
    put(draft.tenant, "transaction", _COUPON_TRANSACTION(transaction))

    code = text(coupon.get("code")) or id_str(coupon.get("id"))
    redemption: dict[str, Any] = {}
    put(redemption, "id", code)
    put(redemption, "series", id_str(series.get("id")))
    put(redemption, "seriesName", text(series.get("description")))
    loyalty = draft.ee_loyalty()
    if redemption:
        loyalty["couponRedemption"] = [redemption]
    value = num(series.get("discount_value"))
    if value is not None:
        discount: dict[str, Any] = {"value": value, "source": "coupon"}
        loyalty["discounts"] = [discount]
    if not loyalty:
        del draft.entity["loyalty"]
    bill_number = text(transaction.get("number"))
    if bill_number is not None:
        draft.commerce()["order"] = {"purchaseID": bill_number}
    elif bill_id is not None and bill_id != "0":
        draft.commerce()["order"] = {"purchaseID": bill_id}
    if code is not None:
        row: dict[str, Any] = {"id": code}
        put(row, "series", id_str(series.get("id")))
        row["state"] = "redeemed"
        draft.loyalty["rewards"] = {"coupons": [row]}


def nonzero_id(value: Any) -> str | None:
    ident = id_str(value)
    return ident if ident != "0" else None


_COUPON_TRANSACTION = record_of((("bill_id", nonzero_id), ("number", text)))
_REDEEMED_COUPON = record_of((("id", id_str), ("code", text), ("redemptionId", id_str), ("redemptionDate", to_iso)))


def issued_points_reversed(draft: Draft, data: Mapping[str, Any]) -> None:
    _balances(draft, data.get("programCurrentPoints"), data.get("programLifetimePoints"))


def redeemed_points_reversed(draft: Draft, data: Mapping[str, Any]) -> None:
    _balances(draft, _program_points(data.get("redemptionReversalToEarningPrograms"), draft.program_id))


def points_transferred_initiated(draft: Draft, data: Mapping[str, Any]) -> None:
    _balances(draft, _program_points(data.get("redemptionFromEarningPrograms"), draft.program_id))


def points_transferred_received(draft: Draft, data: Mapping[str, Any]) -> None:
    _balances(draft, data.get("programCurrentPoints"), data.get("programLifetimePoints"))


def card_updated(draft: Draft, data: Mapping[str, Any]) -> None:
    number = text(data.get("cardNumber"))
    if number is not None:
        card = {"number": number}
        put(card, "status", text(data.get("currentStatusLabel")))
        draft.loyalty["cardsDetails"] = [card]


def loyalty_customer_merge(draft: Draft, data: Mapping[str, Any]) -> None:
    summaries = data.get("survivorCustomerLoyaltySummary")
    summaries = [s for s in summaries if isinstance(s, dict)] if type(summaries) is list else []
    if not summaries:
        return
    summary = _default_program_summary(draft, summaries)
    draft.program_id = id_str(summary.get("loyaltyProgramId"))
    _balances(draft, summary.get("currentPoints"), summary.get("lifetimePoints"))
    put(draft.loyalty, "promisedPoints", num(summary.get("promisedPoints")))
    number = int_or_none(summary.get("tierNumber"))
    if number is not None:
        name = draft.tier_name(draft.program_id, number)
        put(draft.loyalty, "tier", name)
        if name is None:
            draft.profile_tenant["tierNumber"] = number


def _default_program_summary(draft: Draft, summaries: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The summary of the org's default program when known, else the first one."""
    for summary in summaries:
        program = draft.programs.get(id_str(summary.get("loyaltyProgramId")))
        if program is not None and program.is_default:
            return summary
    return summaries[0]


def passthrough(draft: Draft, data: Mapping[str, Any]) -> None:
    """Unknown event (``unknown_events = "passthrough"``): the raw data, cleaned, as JSON text in the tenant block."""
    cleaned = clean({k: v for k, v in data.items() if k != "customerIdentifiers"})
    if cleaned is not None:  # as JSON text: a closed schema has no place for fields nobody declared
        draft.tenant["dataJson"] = compact_json(cleaned)


SPECS: dict[str, EventSpec] = {
    spec.name: spec
    for spec in (
        EventSpec("customerAdded", "loyalty.customerAdded", customer_added, profile=True, contact=True,
                  tenant=CUSTOMER_FIELDS),
        EventSpec("customerUpdated", "loyalty.customerUpdated", customer_updated, profile=True, contact=True,
                  tenant=CUSTOMER_FIELDS,
                  computed=(("updatedFields", _UPDATED_FIELDS), ("customerStatus", _CUSTOMER_STATUS))),
        EventSpec("transactionAdded", "commerce.purchases", transaction_added, tenant=TRANSACTION_FIELDS),
        EventSpec("transactionUpdated", "commerce.transactionUpdated", transaction_updated, tenant=TRANSACTION_FIELDS),
        EventSpec("pointsIssued", "loyalty.pointsIssued", points_issued, profile=True, tenant=POINTS_ISSUED_FIELDS),
        EventSpec("pointsRedeemed", "loyalty.pointsRedeemed", points_redeemed, profile=True,
                  tenant=POINTS_REDEEMED_FIELDS),
        EventSpec("pointsExpired", "loyalty.pointsExpired", points_expired, profile=True, tenant=POINTS_EXPIRED_FIELDS),
        EventSpec("pointsExpiryReminder", "loyalty.pointsExpiryReminder", fields_only,
                  tenant=POINTS_EXPIRY_REMINDER_FIELDS),
        EventSpec("pointsExpiryChange", "loyalty.pointsExpiryChange", fields_only, tenant=POINTS_EXPIRY_CHANGE_FIELDS),
        EventSpec("tierUpgraded", "loyalty.tierUpgraded", tier_upgraded, profile=True, tenant=TIER_FIELDS,
                  computed=(("previousTierName", text), ("upgradedTierName", text))),
        EventSpec("tierDowngraded", "loyalty.tierDowngraded", tier_downgraded, profile=True, tenant=TIER_FIELDS,
                  computed=(("previousTierName", text), ("downgradedTierName", text))),
        EventSpec("tierRenewed", "loyalty.tierRenewed", tier_renewed, profile=True, tenant=TIER_FIELDS,
                  computed=(("currentTierName", text),)),
        EventSpec("tierDowngradeReminder", "loyalty.tierDowngradeReminder", tier_downgrade_reminder, tenant=TIER_FIELDS,
                  computed=(("currentTierName", text),)),
        EventSpec("promotionEarned", "loyalty.promotionEarned", fields_only, tenant=PROMOTION_EARNED_FIELDS),
        EventSpec("CouponIssue", "loyalty.couponIssued", coupon_issue, identity_key=None, profile=True,
                  tenant=COUPON_ISSUE_FIELDS, computed=(("coupons", _ISSUED_COUPONS),)),
        EventSpec("CouponRedeem", "loyalty.couponRedeemed", coupon_redeem, profile=True, tenant=COUPON_REDEEM_FIELDS,
                  computed=(("coupon", _REDEEMED_COUPON), ("series_info", SERIES_INFO),
                            ("transaction", _COUPON_TRANSACTION))),
        EventSpec("rewardIssued", "loyalty.rewardIssued", fields_only, tenant=REWARD_ISSUED_FIELDS),
        EventSpec("issuedPointsReversed", "loyalty.pointsReversed", issued_points_reversed, profile=True,
                  tenant=ISSUED_POINTS_REVERSED_FIELDS),
        EventSpec("redeemedPointsReversed", "loyalty.redemptionReversed", redeemed_points_reversed, profile=True,
                  tenant=REDEEMED_POINTS_REVERSED_FIELDS),
        EventSpec("manualPointsAdjustment", "loyalty.pointsAdjusted", fields_only,
                  tenant=MANUAL_POINTS_ADJUSTMENT_FIELDS),
        EventSpec("pointsTransferredInitiated", "loyalty.pointsTransferredInitiated", points_transferred_initiated,
                  profile=True, tenant=POINTS_TRANSFERRED_INITIATED_FIELDS),
        EventSpec("pointsTransferredReceived", "loyalty.pointsTransferredReceived", points_transferred_received,
                  profile=True, tenant=POINTS_TRANSFERRED_RECEIVED_FIELDS),
        EventSpec("cardUpdated", "loyalty.cardUpdated", card_updated, profile=True, tenant=CARD_UPDATED_FIELDS),
        EventSpec("loyaltyCustomerMerge", "loyalty.customerMerged", loyalty_customer_merge,
                  identity_key="survivorCustomerIdentifiers", profile=True, tenant=LOYALTY_CUSTOMER_MERGE_FIELDS),
    )
}
# Case-insensitive fallback ("couponIssue", "TIERUPGRADED"), consulted only when the exact name misses.
SPECS_BY_LOWER_NAME: dict[str, EventSpec] = {name.lower(): spec for name, spec in SPECS.items()}
# Older single-page schema names for the transfer events.
SPECS_BY_LOWER_NAME["pointstransferinitiated"] = SPECS["pointsTransferredInitiated"]
SPECS_BY_LOWER_NAME["pointstransferreceived"] = SPECS["pointsTransferredReceived"]


# The declaration of what passthrough writes (its spec is made per unknown event name).
PASSTHROUGH_FIELDS: Fields = (("dataJson", text),)


def find_spec(name: str) -> EventSpec | None:
    spec = SPECS.get(name)
    return spec if spec is not None else SPECS_BY_LOWER_NAME.get(name.lower())
