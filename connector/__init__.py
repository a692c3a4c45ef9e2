"""capillary-aep-connector: Capillary loyalty events from Kafka into Adobe Experience Platform."""

import warnings

# confluent-kafka's Schema Registry client imports authlib's deprecated httpx integration, and
# authlib forces its own deprecation warnings on ("always") when imported; silence that one.
try:
    import authlib.deprecate  # noqa: F401 - imported for its side effect, then silenced below
except ImportError:  # pragma: no cover - authlib comes with confluent-kafka[schemaregistry]
    pass
warnings.filterwarnings("ignore", message=r".*httpx module is deprecated.*")
