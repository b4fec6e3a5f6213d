"""The results sink: stores predictions from Kafka and serves them over HTTP and server-sent events."""
