import pytest

from _util import REPO


@pytest.fixture(scope="session")
def repo():
    return REPO
