import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # The test machine's two cores are shared; these models are far too small to gain from threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
