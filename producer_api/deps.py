"""What routes get from the app: the settings and the clients started by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from producer_api.admission import Admission
from producer_api.pages import Page
from producer_api.publisher import Publisher
from producer_api.results import ResultWaiter
from producer_api.settings import ApiSettings
from producer_api.validation import ValidationPool


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the lifespan starts, shared by all requests."""

    settings: ApiSettings
    publisher: Publisher
    waiter: ResultWaiter
    page: Page
    admission: Admission
    validator: ValidationPool


def get_services(request: Request) -> Services:
    """The app's services (set by the lifespan)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
