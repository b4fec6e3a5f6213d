"""The confluent-kafka wrapper's own logic: when an error librdkafka reports on its threads stops a client, and
what it reads of the group membership (the wrapper against the real broker: tests/pipeline_core/
test_client_contract.py and test_transactions.py)."""

from __future__ import annotations

import sys

import pytest
from confluent_kafka import Consumer, KafkaError

from pipeline_core import confluent_client
from pipeline_core.confluent_client import _Errors, _membership
from pipeline_core.errors import KafkaAccessError


def authentication_failed() -> KafkaError:
    return KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed")


def test_an_authentication_error_that_passes_stops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka reports a connection lost during the SASL handshake (a broker restarting) as _AUTHENTICATION.
    now = [100.0]
    monkeypatch.setattr(confluent_client.time, "monotonic", lambda: now[0])
    errors = _Errors("tests")
    errors(authentication_failed())
    errors.raise_pending()  # not yet persistent
    now[0] += 2
    errors.succeeded()  # the next call got an answer: the settings are right
    now[0] += 10
    errors.raise_pending()
    # Once answered, a failing handshake is a broker restarting, however long it lasts: logged, never raised.
    errors(authentication_failed())
    now[0] += 60
    errors.raise_pending()


def test_an_authentication_error_that_persists_is_raised_naming_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(confluent_client.time, "monotonic", lambda: now[0])
    errors = _Errors("tests")
    errors(authentication_failed())
    now[0] += confluent_client.ACCESS_ERROR_PERSISTS_S
    with pytest.raises(KafkaAccessError, match="KAFKA_SASL_PASSWORD"):
        errors.raise_pending()
    errors.raise_pending()  # raised once


def test_transport_errors_are_only_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(confluent_client.time, "monotonic", lambda: now[0])
    errors = _Errors("tests")
    errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    now[0] += 60
    errors.raise_pending()


def test_the_membership_is_read_from_librdkafkas_group_metadata() -> None:
    consumer = Consumer({"group.id": "the-group", "bootstrap.servers": "127.0.0.1:9"})
    try:
        fresh = consumer.consumer_group_metadata()  # not joined yet: no generation, no member id
    finally:
        consumer.close()
    assert _membership(fresh) == (-1, "")
    joined = b"CGMDv2:" + (7).to_bytes(4, sys.byteorder, signed=True) + b"the-group\0rdkafka-1234\0\x01"
    assert _membership(joined) == (7, "rdkafka-1234")
    assert _membership(b"CGMDv9:whatever") is None  # a form not known here is left to the coordinator
    assert _membership(object()) is None
