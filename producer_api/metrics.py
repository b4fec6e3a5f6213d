"""Prometheus metrics of the upload API (served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

UPLOADS = Counter("api_uploads", "Images accepted and acknowledged by the broker")
UPLOADS_REJECTED = Counter("api_uploads_rejected", "Upload requests refused, by reason", ["reason"])
UPLOAD_BYTES = Histogram(
    "api_upload_bytes",
    "Size of each accepted image",
    buckets=(16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216, 67_108_864),
)
PUBLISH_SECONDS = Histogram(
    "api_publish_seconds",
    "From the first send to the last broker ack, per request",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
PREDICT_ROUNDTRIP_SECONDS = Histogram(
    "api_predict_roundtrip_seconds",
    "POST /predict from the publish to the result (compatibility route)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BACKLOG = Gauge("api_backlog_images", "Images accepted but not yet classified (the inference group's lag)")
