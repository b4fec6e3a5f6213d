"""The project's error hierarchy: one root, each subclass says whether retrying can help."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False


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


class DecodeError(PipelineError):
    """A Kafka record does not hold the event it claims to (wrong schema, version or bytes)."""


class SchemaVersionError(DecodeError):
    """A record was written with a schema version this code does not read."""


class ImageDecodeError(PipelineError):
    """Image bytes cannot be decoded into a picture the model can use."""


class ModelLoadError(ConfigurationError):
    """Model weights or a model file are missing, corrupt or not what they claim to be."""
