"""The Kafka side: the consumer (source), topic names, the dead-letter writer, client security."""
