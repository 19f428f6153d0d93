import pytest

from tokencredit.models import create_tiny_model


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """An untrained one-layer tiny model folder, for CLI tests that only need a checkpoint to load."""
    return create_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=32, layers=1, heads=2, kv_heads=1,
                             intermediate=64)
