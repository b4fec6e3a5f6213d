"""Prometheus metrics of an inference consumer."""

from prometheus_client import Counter, Gauge, Histogram

IMAGES_CLASSIFIED = Counter("inference_images_total", "Images the consumer finished, by outcome", ["status"])
DEAD_LETTERED = Counter("inference_dead_letter_total", "Records copied to the dead-letter topic", ["reason"])
BATCH_SIZE = Histogram(
    "inference_batch_size", "Images per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
INFERENCE_SECONDS = Histogram(
    "inference_batch_seconds",
    "Model time per batch (preprocessing and inference)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONSUMER_LAG = Gauge(
    "inference_consumer_lag", "Records behind the end of each assigned partition", ["partition"]
)
READY = Gauge(
    "inference_ready",
    "1 while the consumer loop works (holds partitions, or polled within 30 s), else 0: the container's health",
)
