"Shared pytest fixtures: the `--runslow` switch and the `shared_data` fixture for ../shared/data."
import ipaddress, os, socket
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# derived-file cache of the whole run (subprocesses inherit it): never the user's own ~/.cache/medvision
os.environ.setdefault("MEDVISION_CACHE", __import__("tempfile").mkdtemp(prefix="medvision-test-cache-"))


def _loopback(address) -> bool:
    "True for a loopback (or local unix-socket) address: the only kind a test may connect to."
    if isinstance(address, (str, bytes)): return True   # AF_UNIX path
    host = address[0] if isinstance(address, tuple) and address else address
    if host in ("localhost", "", None): return True
    try: return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError: return False                     # a host name: it would need a DNS look-up


def _pydicom_local_only():
    "Make pydicom's test-data helpers use the installed files only: they never download (tests run offline)."
    import pydicom.data, pydicom.data.data_manager as dm
    get_one = dm.get_testdata_file
    def get_testdata_file(name, read=False, download=False): return get_one(name, read=read, download=download)
    dm.online_test_file_dummy_paths = lambda: {}   # `get_testdata_files` lists installed files only
    dm.get_testdata_file = pydicom.data.get_testdata_file = get_testdata_file


_pydicom_local_only()


class NetworkBlocked(RuntimeError):
    "A test tried to reach the network: tests make no network connection."


def _guard(connect):
    def guarded(self, address, *args, **kwargs):
        if not _loopback(address):
            raise NetworkBlocked(f"test tried to connect to {address!r}; tests make no network connection")
        return connect(self, address, *args, **kwargs)
    return guarded


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    "Fail any test that opens a non-loopback connection (TCP/UDP connect or a DNS look-up)."
    monkeypatch.setattr(socket.socket, "connect", _guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _guard(socket.socket.connect_ex))
    real_gai = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        if not _loopback((host,)): raise NetworkBlocked(f"test tried to resolve {host!r}; tests make no network connection")
        return real_gai(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


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
