"""Pure transform: Capillary loyalty event (any envelope) → AEP streaming XDM messages.

>>> transformer = Transformer(settings.xdm, org_id=settings.aep.org_id, source_name=settings.aep.source_name)
>>> for message in transformer.transform(event):   # ExperienceEvent first, then the profile update
...     send(message.envelope)
"""

from __future__ import annotations

from connector.transform.envelope import CapillaryEvent, normalize
from connector.transform.errors import REASONS, TransformError
from connector.transform.events import SPECS
from connector.transform.transformer import Transformer, XdmMessage

EVENT_NAMES: tuple[str, ...] = tuple(SPECS)

__all__ = ["CapillaryEvent", "EVENT_NAMES", "REASONS", "TransformError", "Transformer", "XdmMessage", "normalize"]
