"""XDM messages to AEP: batches per lane, profile coalescing, the sink's requests, the send budget."""
