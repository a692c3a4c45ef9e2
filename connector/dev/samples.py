"""Deterministic, realistic Capillary events for tests, benchmarks and the sample producer.

Events use the flat webhook envelope and are valid for the Avro schemas in ``schemas/`` (every
required field present; optional ones sometimes absent). Customers come from a bounded pool so that
profiles repeat; ``eventId`` is a UUID drawn from the seeded generator, so the same seed always
produces the same events (given the same ``now_ms``).

>>> events = generate_events(1000, seed=7, now_ms=1_750_000_000_000)
>>> wrapped = wrap(events[0], "wrapped_prefixed")
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Envelope = Literal["flat", "wrapped", "wrapped_prefixed", "body", "data"]
ENVELOPES: tuple[str, ...] = ("flat", "wrapped", "wrapped_prefixed", "body", "data")

ORG_ID = 51186
CUSTOMER_POOL = 500
DEFAULT_PROGRAM = {"id": 2649, "name": "DemoRetail DefaultProgram", "isDefault": True, "pointsToCurrencyRatio": 5.0,
                   "tiers": [{"tierNumber": 1, "tierName": "CLASSIC"}, {"tierNumber": 2, "tierName": "SILVER"},
                             {"tierNumber": 3, "tierName": "GOLD"}, {"tierNumber": 4, "tierName": "PLATINUM"}]}
PARTNER_PROGRAM = {"id": 2650, "name": "DemoRetail Partner Miles", "isDefault": False, "pointsToCurrencyRatio": 1.0,
                   "tiers": [{"tierNumber": 1, "tierName": "BLUE"}, {"tierNumber": 2, "tierName": "BLACK"}]}
STORES = [(f"prod.demo.store.{i}", f"Demo Store {i}", str(12591530 + i)) for i in range(1, 21)]
FIRST_NAMES = ["Asha", "Budi", "Chen", "Dewi", "Eko", "Farah", "Gita", "Hadi", "Intan", "Joko", "Kiran", "Lina"]
LAST_NAMES = ["Sharma", "Santoso", "Wang", "Lestari", "Prasetyo", "Rahman", "Putri", "Wijaya", "Nair", "Tan"]
CURRENCIES = ["IDR", "INR", "SGD", "USD", " "]  # Capillary samples include a blank code

# Relative frequency of each event in a realistic stream: purchases and points dominate.
MIX: dict[str, int] = {
    "transactionAdded": 300, "pointsIssued": 250, "pointsRedeemed": 60, "customerUpdated": 45,
    "customerAdded": 40, "transactionUpdated": 30, "CouponIssue": 30, "CouponRedeem": 25, "pointsExpired": 20,
    "pointsExpiryReminder": 20, "issuedPointsReversed": 15, "promotionEarned": 15, "tierUpgraded": 12,
    "rewardIssued": 10, "tierRenewed": 8, "tierDowngradeReminder": 8, "redeemedPointsReversed": 6,
    "tierDowngraded": 6, "pointsExpiryChange": 5, "manualPointsAdjustment": 5, "cardUpdated": 5,
    "pointsTransferredInitiated": 3, "pointsTransferredReceived": 3, "loyaltyCustomerMerge": 1,
}


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: int
    first_name: str
    last_name: str
    mobile: str
    email: str
    external_id: str
    card: str


class _Gen:
    """One generation run: the seeded RNG, the customer pool and the clock."""

    def __init__(self, seed: int, now_ms: int) -> None:
        self.rng = random.Random(seed)
        self.now_ms = now_ms
        pool_rng = random.Random(f"customers-{seed}")
        self.customers = [self._customer(pool_rng, i) for i in range(CUSTOMER_POOL)]

    @staticmethod
    def _customer(rng: random.Random, i: int) -> Customer:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        return Customer(
            customer_id=380_000_000 + i * 7919,
            first_name=first,
            last_name=last,
            mobile="91" + str(rng.randint(7_000_000_000, 9_999_999_999)),
            email=f"{first.lower()}.{last.lower()}{i}@example.com",
            external_id=f"EXT{100000 + i}",
            card=f"CARD{rng.randint(10**11, 10**12 - 1)}",
        )

    # -- small helpers ---------------------------------------------------------------------------
    def maybe(self, p: float = 0.8) -> bool:
        return self.rng.random() < p

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def amount(self, low: float, high: float) -> float:
        return round(self.rng.uniform(low, high), 2)

    def date(self, days_ahead: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self.now_ms / 1000 + days_ahead * 86400))

    def put(self, target: dict[str, Any], key: str, value: Any, p: float = 0.8) -> None:
        if self.maybe(p):
            target[key] = value

    def customer(self) -> Customer:
        # Skewed towards a core of frequent shoppers, like real loyalty traffic.
        if self.maybe(0.5):
            index = min(int(self.rng.paretovariate(1.2)) - 1, CUSTOMER_POOL - 1)
        else:
            index = self.rng.randrange(CUSTOMER_POOL)
        return self.customers[index]

    def identifiers(self, c: Customer) -> dict[str, Any]:
        ci: dict[str, Any] = {"customerId": c.customer_id}
        self.put(ci, "loyaltyType", self.rng.choice(["loyalty", "LOYALTY"]), 0.5)
        if self.maybe(0.3):
            ci["firstName"], ci["lastName"] = c.first_name, c.last_name
        if self.maybe(0.75):
            instore: dict[str, Any] = {}
            self.put(instore, "mobile", c.mobile, 0.8)
            self.put(instore, "email", c.email, 0.5)
            self.put(instore, "externalId", c.external_id, 0.3)
            if self.maybe(0.3):
                instore["cardnumber"] = c.card
            instore["cardNumbers"] = [c.card] if self.maybe(0.3) else []
            ci["instore"] = instore
        return ci

    def entered_by(self) -> dict[str, Any]:
        code, name, external = self.rng.choice(STORES)
        out: dict[str, Any] = {"id": 200_280_000 + self.rng.randrange(500)}
        self.put(out, "till", {"code": f"{code}.till1", "name": f"{name} Till 1"}, 0.9)
        self.put(out, "store", {"code": code, "name": name, "externalId": external}, 0.9)
        return out

    def program(self) -> dict[str, Any]:
        program = PARTNER_PROGRAM if self.maybe(0.05) else DEFAULT_PROGRAM
        details = dict(program)
        if self.maybe(0.2):
            details["tiers"] = None  # Capillary sends null tiers on some events
        return details

    def triggering(self, name: str, bill: bool = True) -> dict[str, Any]:
        ta: dict[str, Any] = {"name": name}
        if bill:
            bill_id = str(self.rng.randint(2_000_000_000, 2_999_999_999))
            ta["identifiers"] = [{"key": "BillId", "value": bill_id}, {"key": "billNumber", "value": f"B{bill_id[-8:]}"}]
        return ta

    def points(self, low: int = 10, high: int = 500) -> float:
        return float(self.rng.randint(low, high))


# --- per-event data ---------------------------------------------------------------------------


def _customer_data(g: _Gen, c: Customer, updated: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"customerIdentifiers": g.identifiers(c)}
    g.put(d, "loyaltyType", "loyalty", 0.9)
    g.put(d, "source", g.rng.choice(["INSTORE", "instore"]), 0.9)
    g.put(d, "accountId", "", 0.2)
    g.put(d, "firstName", c.first_name, 0.9)
    g.put(d, "lastName", c.last_name, 0.8)
    g.put(d, "enteredAt", g.now_ms - g.rng.randint(60_000, 7_200_000), 0.8)
    g.put(d, "enteredBy", g.entered_by(), 0.8)
    g.put(d, "extendedFields", [{"key": "gender", "value": g.rng.choice(["Male", "Female"])}], 0.3)
    g.put(d, "customFields", [{"key": "preferred_store", "value": g.rng.choice(STORES)[0]}], 0.2)
    if updated:
        changes = []
        if g.maybe(0.5):
            changes.append({"fieldName": "email", "previousValue": f"old{c.customer_id}@example.com",
                            "currentValue": c.email, "fieldType": "StandardField", "source": "INSTORE"})
        if g.maybe(0.4):
            changes.append({"fieldName": "firstname", "previousValue": "X", "currentValue": c.first_name,
                            "fieldType": "StandardField", "source": "INSTORE"})
        if g.maybe(0.3):
            changes.append({"fieldName": "city", "previousValue": None, "currentValue": "Jakarta",
                            "fieldType": "ExtendedField", "source": "INSTORE"})
        g.put(d, "updatedFields", changes, 0.9)
        if g.maybe(0.1):
            d["customerStatus"] = {"previousStatus": "ACTIVE", "previousLabel": "Active", "currentStatus": "DELETED",
                                   "currentLabel": "Deleted", "reason": "PII deletion request"}
        g.put(d, "triggeringActivity", {"name": "CustomerUpdate", "requestId": g.uuid()}, 0.5)
    return d


def _transaction(g: _Gen, c: Customer) -> dict[str, Any]:
    bill_type = g.rng.choices(["REGULAR", "RETURN", "MIXED"], [85, 10, 5])[0]
    gross = g.amount(5, 2000)
    discount = round(gross * g.rng.choice([0, 0, 0.05, 0.1]), 2)
    d: dict[str, Any] = {
        "customerIdentifiers": g.identifiers(c),
        "transactionId": g.rng.randint(60_000_000, 69_999_999),
        "billNumber": f"{g.rng.randint(1, 9)}_{g.rng.randint(10**9, 10**10 - 1)}",
        "amount": round(gross - discount, 2),
        "billType": bill_type,
    }
    g.put(d, "billClientId", "", 0.1)
    g.put(d, "grossAmount", gross)
    g.put(d, "discount", discount)
    g.put(d, "currencyCode", g.rng.choice(CURRENCIES), 0.9)
    g.put(d, "deliveryStatus", "RETURNED" if bill_type == "RETURN" else g.rng.choice(["PLACED", "DELIVERED"]), 0.6)
    g.put(d, "lineItemCount", g.rng.randint(1, 8))
    g.put(d, "outlierStatus", "NORMAL", 0.5)
    g.put(d, "enteredAt", g.now_ms - g.rng.randint(60_000, 3_600_000), 0.9)
    g.put(d, "enteredBy", g.entered_by(), 0.9)
    g.put(d, "extendedFields", [{"key": "channel", "value": "POS"}], 0.2)
    return d


def _points_issued(g: _Gen, c: Customer) -> dict[str, Any]:
    program = g.program()
    regular = g.points()
    promotions = []
    if g.maybe(0.3):
        promotions.append({"promotionName": "Double Points Weekend", "promotionIdentifier": "PROMO-DPW",
                           "promotionType": "POINTS", "promotionPoints": g.points(5, 100),
                           "promotionPointsExpiryDate": g.date(180)})
    total = regular + sum(p["promotionPoints"] for p in promotions)
    current = total + g.points(0, 5000)
    d: dict[str, Any] = {
        "customerIdentifiers": g.identifiers(c),
        "loyaltyProgramId": program["id"],
        "totalPointsIssued": total,
    }
    g.put(d, "entityInformation", {"entityType": "USER", "entityId": c.customer_id})
    g.put(d, "triggeringActivity", g.triggering(g.rng.choice(["TransactionAdd", "NewBill", "GenericEvent"])), 0.9)
    g.put(d, "loyaltyProgramDetails", program, 0.9)
    g.put(d, "programCurrentPoints", current, 0.9)
    g.put(d, "programLifetimePoints", current + g.points(0, 10000), 0.9)
    g.put(d, "regularPointsIssued", regular, 0.9)
    g.put(d, "regularPointsBreakup", [{"points": regular, "expiryAt": g.date(365)}], 0.7)
    d["promotionalPointsIssued"] = promotions
    g.put(d, "promisedPointsIssued", [], 0.5)
    g.put(d, "AvailablePointsBalance", current, 0.2)
    return d


def _points_redeemed(g: _Gen, c: Customer) -> dict[str, Any]:
    program = g.program()
    redeemed = g.points(50, 1000)
    current = g.points(0, 5000)
    d: dict[str, Any] = {"customerIdentifiers": g.identifiers(c), "loyaltyProgramId": program["id"],
                         "totalPointsRedeemed": redeemed}
    ta = {"name": "PointsRedemption", "identifiers": [{"key": "billId", "value": str(g.rng.randint(10**9, 2 * 10**9))},
                                                        {"key": "redemptionId", "value": str(g.rng.randint(10**6, 10**7))}]}
    g.put(d, "triggeringActivity", ta, 0.9)
    g.put(d, "loyaltyProgramDetails", program, 0.9)
    g.put(d, "redemptionSummaryId", g.rng.randint(10**6, 10**7))
    g.put(d, "redeemedPointsCurrencyValue", round(redeemed / program["pointsToCurrencyRatio"], 2))
    g.put(d, "redemptionNotes", "redeemed at POS", 0.4)
    g.put(d, "redemptionBillNumber", f"R{g.rng.randint(10**6, 10**7)}", 0.6)
    g.put(d, "isGroupRedemption", False, 0.7)
    g.put(d, "redemptionFromEarningPrograms",
          [{"programId": program["id"], "pointsRedeemed": redeemed, "programCurrentPoints": current}], 0.9)
    return d


def _program_event(g: _Gen, c: Customer, **fields: Any) -> dict[str, Any]:
    program = g.program()
    d: dict[str, Any] = {"customerIdentifiers": g.identifiers(c), "loyaltyProgramId": program["id"]}
    g.put(d, "loyaltyProgramDetails", program, 0.9)
    d.update(fields)
    return d


def _tier_event(g: _Gen, c: Customer, kind: str) -> dict[str, Any]:
    program = g.program()
    top = len((PARTNER_PROGRAM if program["id"] == PARTNER_PROGRAM["id"] else DEFAULT_PROGRAM)["tiers"])
    d: dict[str, Any] = {"customerIdentifiers": g.identifiers(c), "loyaltyProgramId": program["id"]}
    g.put(d, "entityInformation", {"entityType": "USER", "entityId": c.customer_id})
    g.put(d, "loyaltyProgramDetails", program, 0.9)
    expiry_days = g.rng.randint(30, 365)
    if kind == "tierUpgraded":
        new = g.rng.randint(2, top)
        g.put(d, "previousTierNumber", new - 1, 0.9)
        d["upgradedTierNumber"] = new
        g.put(d, "upgradeType", "STRATEGY", 0.8)
    elif kind == "tierDowngraded":
        new = g.rng.randint(1, top - 1)
        g.put(d, "previousTierNumber", new + 1, 0.9)
        d["downgradedTierNumber"] = new
    elif kind == "tierRenewed":
        d["currentTierNumber"] = g.rng.randint(1, top)
        g.put(d, "renewType", "STRATEGY", 0.7)
    else:  # tierDowngradeReminder
        d["currentTierNumber"] = g.rng.randint(2, top)
        g.put(d, "scheduledDowngradeDate", g.date(g.rng.randint(7, 30)), 0.9)
        return d
    g.put(d, "tierExpiryDate", g.date(expiry_days), 0.9)
    g.put(d, "tierExpiryDateInMillis", g.now_ms + expiry_days * 86_400_000, 0.5)
    g.put(d, "notes", "tier evaluated by strategy", 0.5)
    g.put(d, "triggeringActivity", g.triggering("SlabUpgrade", bill=False), 0.5)
    return d


def _series_info(g: _Gen) -> dict[str, Any]:
    value = float(g.rng.choice([5, 10, 20, 50]))
    return {"id": 105_700 + g.rng.randrange(20), "description": f"{int(value)} off on next visit",
            "seriesType": "LOYALTY", "clientHandlingType": "DISC_CODE", "valid_till": g.now_ms + 30 * 86_400_000,
            "discount_code": "FLAT", "discount_type": "ABS", "discount_value": value}


def _coupon_issue(g: _Gen, c: Customer) -> dict[str, Any]:
    coupon: dict[str, Any] = {"id": g.rng.randint(7 * 10**8, 8 * 10**8), "code": f"CPN{g.rng.randint(10**6, 10**7)}",
                              "customerIdentifiers": g.identifiers(c)}
    g.put(coupon, "issued_on", g.now_ms - g.rng.randint(1_000, 60_000))
    g.put(coupon, "valid_till", g.now_ms + 30 * 86_400_000)
    d: dict[str, Any] = {"coupons": [coupon]}
    g.put(d, "addedAt", g.now_ms - g.rng.randint(1_000, 60_000))
    g.put(d, "addedBy", g.entered_by(), 0.6)
    g.put(d, "series_info", _series_info(g), 0.9)
    g.put(d, "issualType", "SINGLE")
    return d


def _coupon_redeem(g: _Gen, c: Customer) -> dict[str, Any]:
    coupon: dict[str, Any] = {"id": g.rng.randint(7 * 10**8, 8 * 10**8), "code": f"CPN{g.rng.randint(10**6, 10**7)}"}
    g.put(coupon, "redemptionId", g.rng.randint(10**7, 2 * 10**7))
    g.put(coupon, "redemptionDate", g.now_ms - g.rng.randint(1_000, 60_000))
    g.put(coupon, "series_info", _series_info(g), 0.9)
    d: dict[str, Any] = {"coupon": coupon, "customerIdentifiers": g.identifiers(c)}
    g.put(d, "addedAt", g.now_ms - g.rng.randint(1_000, 60_000))
    g.put(d, "addedBy", {"id": 12_808_452})
    if g.maybe(0.8):
        d["transaction"] = {"bill_id": 0, "number": ""} if g.maybe(0.3) else {
            "bill_id": g.rng.randint(10**9, 2 * 10**9), "number": f"B{g.rng.randint(10**6, 10**7)}"}
    return d


def _data_for(name: str, g: _Gen, c: Customer) -> dict[str, Any]:
    rng = g.rng
    if name in ("customerAdded", "customerUpdated"):
        return _customer_data(g, c, name == "customerUpdated")
    if name in ("transactionAdded", "transactionUpdated"):
        return _transaction(g, c)
    if name == "pointsIssued":
        return _points_issued(g, c)
    if name == "pointsRedeemed":
        return _points_redeemed(g, c)
    if name.startswith("tier"):
        return _tier_event(g, c, name)
    if name == "CouponIssue":
        return _coupon_issue(g, c)
    if name == "CouponRedeem":
        return _coupon_redeem(g, c)
    if name == "pointsExpired":
        d = _program_event(g, c, pointsExpired=g.points(1, 300))
        g.put(d, "triggeringActivity", {"name": "PointsExpiry"}, 0.3)
        return d
    if name == "pointsExpiryReminder":
        return _program_event(g, c, pointsScheduledForExpiry=g.points(1, 300), scheduledExpiryDate=g.date(rng.randint(3, 30)))
    if name == "pointsExpiryChange":
        d = _program_event(g, c)
        g.put(d, "entityInformation", {"entityType": "USER", "entityId": c.customer_id})
        d["updatedPointsExpiryBreakup"] = [{
            "pointAwardedRefID": str(rng.randint(10**7, 10**8)), "pointsAwardedRefType": "BILL", "points": g.points(),
            "pointsPreviousExpiryDate": g.date(10), "expiryUpdateReasonType": "MANUAL",
            "expiryUpdateReasonNote": "goodwill extension", "newExpiryDate": g.date(100), "newExpirySetType": "ABSOLUTE"}]
        return d
    if name == "promotionEarned":
        d = {"customerIdentifiers": g.identifiers(c), "promotionId": f"6{rng.randint(10**6, 10**7)}"}
        g.put(d, "loyaltyProgramId", DEFAULT_PROGRAM["id"])
        g.put(d, "promotionName", "Spend 1000 get 100", 0.9)
        g.put(d, "promotionDescription", "Earn 100 bonus points", 0.5)
        g.put(d, "promotionStartDate", g.now_ms - 30 * 86_400_000, 0.6)
        g.put(d, "promotionEndDate", g.now_ms + 30 * 86_400_000, 0.6)
        g.put(d, "promotionEarnedDate", g.date(0), 0.7)
        g.put(d, "promotionEarnedExpiryDate", g.date(60), 0.7)
        g.put(d, "pointsOfferType", "GENERIC", 0.7)
        g.put(d, "issualId", str(rng.randint(10**6, 10**7)))
        g.put(d, "earnedId", str(rng.randint(10**6, 10**7)))
        g.put(d, "earnRestrictions", [{"limitOn": "EARN", "kpi": "COUNT", "restrictionType": "CUSTOMER", "maxLimit": 1.0}], 0.4)
        return d
    if name == "rewardIssued":
        d = {"customerIdentifiers": g.identifiers(c), "rewardId": rng.randint(10**4, 10**5)}
        g.put(d, "type", rng.choice(["VOUCHER", "POINTS"]))
        g.put(d, "redemptionType", rng.choice(["INTOUCH_REWARD", "VENDOR_INTOUCH_REWARD"]))
        g.put(d, "startDate", g.now_ms - 86_400_000)
        g.put(d, "endDate", g.now_ms + 90 * 86_400_000)
        g.put(d, "intouchPoints", g.points(100, 2000))
        g.put(d, "label", "Coffee voucher", 0.6)
        g.put(d, "transactionId", str(rng.randint(10**6, 10**7)), 0.5)
        g.put(d, "intouchRewardDetails", {"intouchCouponCode": f"RW{rng.randint(10**5, 10**6)}",
                                          "codeExpiry": g.now_ms + 90 * 86_400_000}, 0.6)
        return d
    if name == "issuedPointsReversed":
        d = _program_event(g, c, totalIssuedPointsReversed=g.points(10, 200))
        g.put(d, "triggeringActivity", g.triggering("ReturnBill"), 0.9)
        g.put(d, "programCurrentPoints", g.points(0, 5000), 0.9)
        g.put(d, "programLifetimePoints", g.points(5000, 20000), 0.9)
        g.put(d, "regularPointsReversed", d["totalIssuedPointsReversed"], 0.8)
        g.put(d, "promisedPointsReversed", 0.0, 0.4)
        g.put(d, "promotionalPointsReversed", [], 0.5)
        return d
    if name == "redeemedPointsReversed":
        program = g.program()
        reversed_points = g.points(10, 500)
        d = {"customerIdentifiers": g.identifiers(c), "redeemedPointsReversed": reversed_points}
        g.put(d, "loyaltyProgramId", program["id"], 0.9)
        g.put(d, "loyaltyProgramDetails", program, 0.8)
        g.put(d, "redeemedPointsReversedDetails", {"available": reversed_points, "expired": 0.0})
        g.put(d, "redemptionSummaryId", rng.randint(10**6, 10**7))
        g.put(d, "redemptionReversalToEarningPrograms",
              [{"programId": program["id"], "pointsReversed": reversed_points, "programCurrentPoints": g.points(0, 5000)}], 0.9)
        return d
    if name == "manualPointsAdjustment":
        program = g.program()
        d = {"customerIdentifiers": g.identifiers(c)}
        g.put(d, "loyaltyProgramId", program["id"], 0.9)
        g.put(d, "totalPoinstDeducted", g.points(10, 100), 0.9)  # sic: Capillary's field name
        g.put(d, "programPointsSplit", [{"pointsAwardedId": rng.randint(10**6, 10**7), "programId": program["id"],
                                         "points": g.points(10, 100), "pointsType": "REGULAR"}], 0.7)
        g.put(d, "reason", "customer goodwill", 0.8)
        g.put(d, "triggeringActivity", {"name": "ManualPointsAdjustment"}, 0.6)
        return d
    if name == "pointsTransferredInitiated":
        other = g.customer()
        amount = g.points(50, 500)
        d = _program_event(g, c, totalPointsTransferred=amount)
        g.put(d, "transferReceivingCustomerIdentifiers", {"customerId": other.customer_id}, 0.9)
        g.put(d, "redemptionFromEarningPrograms",
              [{"programId": d["loyaltyProgramId"], "pointsRedeemed": amount, "programCurrentPoints": g.points(0, 3000)}], 0.8)
        return d
    if name == "pointsTransferredReceived":
        other = g.customer()
        d = _program_event(g, c, totalPointsTransferred=g.points(50, 500))
        g.put(d, "transferInitiatingCustomerIdentifiers", {"customerId": other.customer_id}, 0.9)
        g.put(d, "programCurrentPoints", g.points(0, 5000), 0.6)
        return d
    if name == "cardUpdated":
        d = {"customerIdentifiers": g.identifiers(c), "cardNumber": c.card}
        g.put(d, "previousStatusLabel", "ACTIVE", 0.8)
        g.put(d, "currentStatusLabel", rng.choice(["BLOCKED", "LOST", "ACTIVE"]), 0.9)
        return d
    if name == "loyaltyCustomerMerge":
        victim = g.customer()
        d = {"survivorCustomerIdentifiers": g.identifiers(c), "victimCustomerIdentifiers": g.identifiers(victim)}
        g.put(d, "survivorCustomerLoyaltySummary", [{
            "loyaltyProgramId": DEFAULT_PROGRAM["id"], "lifetimePoints": g.points(1000, 20000),
            "currentPoints": g.points(0, 5000), "promisedPoints": 0.0, "tierNumber": rng.randint(1, 4)}], 0.9)
        return d
    raise ValueError(f"no sample generator for event {name!r}")


EVENT_NAMES: tuple[str, ...] = tuple(MIX)


def generate_events(
    n: int,
    seed: int = 0,
    event_names: Sequence[str] | None = None,
    *,
    envelope: Envelope = "flat",
    now_ms: int | None = None,
    org_id: int = ORG_ID,
) -> list[dict[str, Any]]:
    """``n`` events in the realistic mix (or uniformly over ``event_names``), ``createdAt`` up to an hour ago."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    g = _Gen(seed, now_ms)
    if event_names is not None:
        unknown = [e for e in event_names if e not in MIX]
        if unknown:
            raise ValueError(f"no sample generator for {unknown}")
        names, weights = list(event_names), None
    else:
        names, weights = list(MIX), list(MIX.values())
    events = []
    for _ in range(n):
        name = g.rng.choices(names, weights)[0] if weights else g.rng.choice(names)
        events.append(_event(g, name, org_id))
    return events if envelope == "flat" else [wrap(e, envelope) for e in events]


def _event(g: _Gen, name: str, org_id: int) -> dict[str, Any]:
    c = g.customer()
    event_id = g.uuid()
    loyalty_event_id = "".join(g.rng.choices("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ", k=10))
    created_at = g.now_ms - g.rng.randint(500, 3_600_000)
    event: dict[str, Any] = {"eventName": name, "eventId": event_id}
    if name.startswith("points") or name in ("issuedPointsReversed", "redeemedPointsReversed", "manualPointsAdjustment"):
        event["eventLogId"] = g.rng.randint(30_000_000, 40_000_000)
    elif name == "promotionEarned":
        event["eventLogId"] = -1
    event["orgId"] = org_id
    event["refId"] = f"{org_id}_{loyalty_event_id}"
    if g.maybe(0.9):
        event["apiRequestId"] = g.uuid()
    event["createdAt"] = created_at
    if name != "pointsExpiryReminder":
        event["loyaltyEventId"] = loyalty_event_id
    if g.maybe(0.5):
        event["traceAttributes"] = {"x-cap-lineage-id": g.uuid(), "requestId": g.uuid()}
    event["data"] = _data_for(name, g, c)
    return event


def wrap(event: dict[str, Any], style: str) -> dict[str, Any]:
    """Re-shape a flat event into one of the other envelopes Capillary uses (see capillary-events.md A.3)."""
    if style == "flat":
        return event
    if style == "body":
        return {"body": event}
    if style == "data":
        return {"data": event, "errors": None, "warnings": None}
    if style in ("wrapped", "wrapped_prefixed"):
        name = event["eventName"]
        attributes = {k: v for k, v in event.items() if k not in ("eventId", "traceAttributes")}
        out: dict[str, Any] = {}
        if "eventId" in event:
            out["eventId"] = event["eventId"]
        out["eventType"] = f"{event.get('orgId')}_{name}" if style == "wrapped_prefixed" else name
        out["consumerGroupId"] = None
        out["actionType"] = "START"
        created = event.get("createdAt")
        # The bus stamps its own time a few ms after createdAt (kept as it is when not an int).
        out["timeStamp"] = created + 14 if type(created) is int else created
        out["attributes"] = attributes
        return out
    raise ValueError(f"unknown envelope style {style!r}; expected one of {ENVELOPES}")


def sample_xdm_config(**overrides: Any) -> Any:
    """An ``XdmConfig`` with placeholder routes (tenant ``capillary``), for tests, benchmarks and demos."""
    from connector.tools.dryrun import placeholder_xdm_config

    return placeholder_xdm_config(**overrides)
