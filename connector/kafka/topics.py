"""Default Kafka topic layout: one topic per event family, ``capillary.events.<family>``.

Capillary keys records by customer id, so one customer's events stay in one partition (ordered).
The connector subscribes to ``^capillary\\.events\\..*`` by default; the dead-letter topic lives
outside that prefix so it is never consumed back.
"""

from __future__ import annotations

TOPIC_PREFIX = "capillary.events."
DEFAULT_SUBSCRIPTION = r"^capillary\.events\..*"
DEFAULT_DLQ_TOPIC = "capillary.dlq"

FAMILIES: dict[str, tuple[str, ...]] = {
    "customer": ("customerAdded", "customerUpdated", "loyaltyCustomerMerge", "cardUpdated"),
    "transaction": ("transactionAdded", "transactionUpdated"),
    "points": (
        "pointsIssued", "pointsRedeemed", "pointsExpired", "pointsExpiryReminder", "pointsExpiryChange",
        "issuedPointsReversed", "redeemedPointsReversed", "manualPointsAdjustment",
        "pointsTransferredInitiated", "pointsTransferredReceived",
    ),
    "tier": ("tierUpgraded", "tierDowngraded", "tierRenewed", "tierDowngradeReminder"),
    "rewards": ("promotionEarned", "CouponIssue", "CouponRedeem", "rewardIssued"),
}
_FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names}
OTHER_FAMILY = "other"


def family_of(event_name: str) -> str:
    return _FAMILY_OF.get(event_name, OTHER_FAMILY)


def topic_for(event_name: str, prefix: str = TOPIC_PREFIX) -> str:
    return prefix + family_of(event_name)


def all_topics(prefix: str = TOPIC_PREFIX) -> list[str]:
    return [prefix + f for f in (*FAMILIES, OTHER_FAMILY)]
