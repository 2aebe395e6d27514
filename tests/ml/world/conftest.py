"""The scene pool the views and training tests share."""

from __future__ import annotations

import pytest

from ml.world.views import ScenePool, render_pool


@pytest.fixture(scope="module")
def pool() -> ScenePool:
    return render_pool(24, seed=77, size=128)
