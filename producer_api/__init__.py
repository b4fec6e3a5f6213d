"""The upload API: validates images, publishes one event per image to Kafka, answers 202 with result URLs."""
