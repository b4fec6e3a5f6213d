"""Settings of `make run`: how many consumers, which ports, where the local data lives."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from inference_consumer.settings import ModelName
from pipeline_core.settings import PipelineSettings


class LauncherSettings(PipelineSettings):
    """What the launcher decides; each service still reads its own settings from the same environment."""

    inference_consumers: int = Field(2, ge=0, le=16, description="Inference consumer processes to start.")
    shadow_model_name: ModelName | None = Field(
        None,
        description="Also start a shadow model: SHADOW_CONSUMERS consumers of this model in a group of their own "
        "(CONSUMER_GROUP_SHADOW), at a lower CPU priority; the sink stores and compares its answers "
        "(GET /v1/models) and answers clients from the primary's alone.",
    )
    shadow_consumers: int = Field(
        1, ge=0, le=16, description="Shadow consumer processes to start (0: a canary without a shadow)."
    )
    canary_consumers: int = Field(
        0,
        ge=0,
        le=16,
        description="Canary: this many consumers of SHADOW_MODEL_NAME join the primary's group beside its "
        "INFERENCE_CONSUMERS, and answer the clients of the images partitions they are assigned (about "
        "CANARY_CONSUMERS / (INFERENCE_CONSUMERS + CANARY_CONSUMERS) of the images; docs/model.md).",
    )

    api_port: int = Field(8000, ge=1, le=65535, description="Port of the upload API.")
    sink_port: int = Field(8001, ge=1, le=65535, description="Port of the results sink.")
    local_kafka_port: int = Field(9092, ge=1, le=65535, description="Port of the jar-launched broker.")
    local_kafka_controller_port: int = Field(
        9093, ge=1, le=65535, description="Controller port of that broker."
    )
    local_kafka_brokers: int = Field(
        1,
        ge=1,
        le=5,
        description="Nodes of the jar-launched cluster: 3 replicates every topic three times, "
        "min.insync.replicas 2 (ports LOCAL_KAFKA_PORT and the next ones).",
    )
    local_kafka_security: Literal["PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="SASL_SSL: the local cluster requires TLS and SCRAM-SHA-512, one user per service with "
        "only its ACLs; certificates and passwords are made at first start in DATA_DIR.",
    )
    data_dir: Path = Field(Path("var"), description="Broker data and the results database of `make run`.")
    service_stop_timeout_s: float = Field(20.0, gt=0, description="How long each service may take to stop.")

    @model_validator(mode="after")
    def _canary_needs_a_candidate(self) -> LauncherSettings:
        if self.canary_consumers and not self.shadow_model_name:
            raise ValueError("CANARY_CONSUMERS runs the candidate model: name it with SHADOW_MODEL_NAME")
        return self
