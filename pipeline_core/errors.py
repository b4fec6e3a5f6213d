"""The project's error hierarchy: one root, each subclass says whether retrying can help."""

from __future__ import annotations

from collections.abc import Sequence


class PipelineError(Exception):
    """Root of every error this project raises on purpose; `retriable` says whether trying again can help.

    The class sets the default; one instance may say otherwise (`PublishError(..., retriable=False)` for a
    record the broker will never take)."""

    retriable: bool = False

    def __init__(self, *args: object, retriable: bool | None = None) -> None:
        super().__init__(*args)
        if retriable is not None:
            self.retriable = retriable


class ConfigurationError(PipelineError):
    """A setting or an installed file is not usable; fix the configuration and restart."""


class DependencyMissingError(ConfigurationError):
    """A program or package the project needs is not installed."""


class BrokerUnavailableError(PipelineError):
    """The Kafka broker could not be reached (yet)."""

    retriable = True


class PublishError(PipelineError):
    """An event was not acknowledged by the broker."""

    retriable = True


class RecordRefusedError(PublishError):
    """The broker refused these records and always will (too large for the topic): `records` names them."""

    retriable = False

    def __init__(self, message: str, records: Sequence[object]) -> None:
        super().__init__(message)
        self.records = list(records)


class KafkaAccessError(ConfigurationError):
    """The cluster refused this client: authentication failed or an ACL is missing. Fix the named setting."""

    @classmethod
    def credentials_refused(cls, doing: str, detail: str) -> KafkaAccessError:
        """The cluster refused the SASL credentials (the same words whichever Kafka client saw it)."""
        return cls(
            f"{doing}: the cluster refused the credentials ({detail}): check KAFKA_SASL_USERNAME, "
            "KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
        )

    @classmethod
    def acl_missing(cls, doing: str, detail: str) -> KafkaAccessError:
        """The cluster refused an operation to this principal."""
        return cls(
            f"{doing}: the cluster refused this client ({detail}): the principal of KAFKA_SASL_USERNAME lacks "
            "an ACL (docs/operations.md lists what each service needs)"
        )


class CommitRefusedError(PipelineError):
    """The group refused an offset commit because the partitions moved; their next owner re-reads them."""


class FencedError(PipelineError):
    """A newer producer with this process's transactional id took over: this process is a zombie and must stop
    (or two processes share one CONSUMER_INSTANCE_ID)."""


class TransactionError(PipelineError):
    """A Kafka transaction could not be completed (aborted, fenced or timed out); nothing of it is visible."""

    retriable = True


class DecodeError(PipelineError):
    """A Kafka record does not hold the event it claims to (wrong schema, version or bytes)."""


class SchemaVersionError(DecodeError):
    """A record was written with a schema version this code does not read."""


class ImageDecodeError(PipelineError):
    """Image bytes cannot be decoded into a picture the model can use."""


class ModelLoadError(ConfigurationError):
    """Model weights or a model file are missing, corrupt or not what they claim to be."""
