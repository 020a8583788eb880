"Shared pytest fixtures: the `--runslow` switch and the `shared_data` fixture for ../shared/data."
import os
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"): return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords: item.add_marker(skip)


@pytest.fixture
def shared_data():
    "Return a callable `name -> Path` that skips the test when ../shared/data/<name> is absent."
    from medvision.core import shared_data as _sd
    def get(name=None):
        p = _sd(name)
        if p is None:
            pytest.skip(f"real data '{name or 'shared/data'}' not found: put it in ../shared/data or set MEDVISION_SHARED_DATA")
        return p
    return get
