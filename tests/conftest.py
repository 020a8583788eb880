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


class NetworkBlocked(OSError):
    "A test tried to reach the network (an `OSError`, so the code under test sees an offline machine)."


@pytest.fixture(autouse=True)
def no_network(request, monkeypatch):
    """Block every non-loopback connection and DNS look-up, and fail the test that tried one.

    A test marked `network_probe` checks how the code behaves offline: its blocked attempts are expected."""
    tried = []
    def block(what):
        tried.append(what)
        raise NetworkBlocked(f"test tried to reach {what}; tests make no network connection")
    def guard(connect):
        def guarded(self, address, *args, **kwargs):
            if not _loopback(address): block(repr(address))
            return connect(self, address, *args, **kwargs)
        return guarded
    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    real_gai = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        if not _loopback((host,)): block(repr(host))
        return real_gai(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    if tried and request.node.get_closest_marker("network_probe") is None:
        pytest.fail(f"the test tried to reach the network ({', '.join(tried[:3])}); tests make no network connection")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"): return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords: item.add_marker(skip)


@pytest.fixture
def bench_script():
    "Import a script of `bench/` by name: `bench_script('gpu')` is bench/gpu.py as a module."
    import importlib.util
    from pathlib import Path
    def load(name):
        spec = importlib.util.spec_from_file_location(f'bench_{name}', Path(__file__).resolve().parents[1]/'bench'/f'{name}.py')
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


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


@pytest.fixture(scope='session')
def ct_vols(tmp_path_factory):
    """One synthetic patient (32×32×12, 0.7×0.7×2.5 mm, offset origin) as NIfTI and as a DICOM series, normal and
    flipped: `{'nii'|'dcm'[-flipped]: (source, mask .nii.gz)}`."""
    from medvision.synth import synth
    d = tmp_path_factory.mktemp('ct-vols')
    res = {}
    for flip in (False, True):
        f = '-flipped' if flip else ''
        n = synth('ct-volume-nifti', d/f'nii{f}', n=1, size=32, depth=12, noise=0, flipped=flip)
        s = synth('ct-volume-dicom', d/f'dcm{f}', n=1, size=32, depth=12, noise=0, flipped=flip)
        res[f'nii{f}'] = (n/'vol_0.nii.gz', n/'vol_0_mask.nii.gz')
        res[f'dcm{f}'] = (s/'series_0', s/'series_0_mask.nii.gz')
    return res
