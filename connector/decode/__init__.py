"""Bytes to Capillary events: Schema Registry and single-object Avro, JSON; hostile input refused."""
