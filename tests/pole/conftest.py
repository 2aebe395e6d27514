"""Fixtures for the client tests: the real API (embedded database and queue) and a Client with its own key."""

from __future__ import annotations

import pytest

from ml.data.archive import zip_folder
from pole.client import Client
from tests.app import conftest as service_fixtures
from tests.app.conftest import new_key
from tests.app.service import small_dataset

# The same real API on the embedded default as the service tests use.
settings = service_fixtures.settings
api = service_fixtures.api

DATASET_IMAGES = 6


@pytest.fixture
def client(api, settings):
    with Client(api.url, new_key(settings, "carol")) as client:
        yield client


@pytest.fixture
def dataset_folder(tmp_path):
    """The shared tiny manifest dataset cut to 6 images, with masks."""
    return small_dataset(tmp_path / "small", images=DATASET_IMAGES)


@pytest.fixture
def dataset_zip(dataset_folder, tmp_path):
    return zip_folder(dataset_folder, tmp_path / "small.zip")
