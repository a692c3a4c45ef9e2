"""``capillary-aep backfill``: history through AEP's Batch Ingestion API, then the stream takes over.

    plan     the range: per partition a start (earliest or a time) and a stop fixed at start (source.py)
    read     decode → transform → encode with the stream's RecordProcessor; events to upload files,
             profile updates to buckets by customer, failures to the dead-letter topic (stage.py),
             checkpointed in the manifest (manifest.py)
    merge    each customer's profile updates into one record, as the stream coalesces (profiles.py)
    load     a batch per dataset (≤ 1,500 files), files uploaded small or in chunks, COMPLETE, the
             Catalog status followed to a final state (aep.py, load.py)
    hand over  the stop point becomes the consumer group's committed offsets (handover.py)

run.py composes them; docs/backfill.md is the operator's guide.
"""
