"""Prometheus metrics of the results sink (served at `/metrics`)."""

from prometheus_client import Counter, Gauge, Histogram

RESULTS_WRITTEN = Counter("results_written", "Results stored for the first time, by status", ["status"])
DUPLICATE_RESULTS = Counter("duplicate_results", "Predictions of a job stored already (re-deliveries)")
UNDECODABLE_RECORDS = Counter(
    "undecodable_records", "Records dead-lettered: no readable event in them", ["kind"]
)
FEEDBACK_WRITTEN = Counter("feedback_written", "Feedback reports stored")
SSE_CLIENTS = Gauge("sse_clients", "Live SSE streams")
STORE_WRITE_SECONDS = Histogram(
    "store_write_seconds",
    "Time to store one polled batch of predictions",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RESULT_AGE_SECONDS = Histogram(
    "sink_result_age_seconds",
    "Round trip of one job: from upload receipt at the API to its result stored by the sink",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
MODEL_RESULTS = Counter(
    "sink_model_results",
    "Results stored, by role (primary, shadow), model name and status",
    ["role", "model", "status"],
)
MODEL_COMPARED = Counter(
    "sink_model_compared",
    "Images the primary and a shadow model both classified, by the shadow's name and whether the top labels agree",
    ["model", "outcome"],
)
MODEL_INFERENCE_SECONDS = Histogram(
    "sink_model_inference_seconds",
    "The model call of each stored result's batch, by role and model name",
    ["role", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MODEL_ROUND_TRIP_SECONDS = Histogram(
    "sink_model_round_trip_seconds",
    "From the API's receipt of an upload to each model's result stored, by role and model name",
    ["role", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
