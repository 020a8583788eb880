"The test suite runs offline: the conftest guard blocks any non-loopback connection and fails the test that tried."
import shutil, socket
from pathlib import Path
import pytest

pytest_plugins = ['pytester']


@pytest.mark.network_probe
def test_a_connection_attempt_is_blocked_as_an_offline_machine_would():
    with pytest.raises(OSError, match='tests make no network connection'):
        socket.create_connection(('example.org', 443), timeout=1)


def test_loopback_is_allowed():
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=2)
    c.close(); srv.close()


def test_a_test_that_reaches_out_fails(pytester):
    "Even when the code under test swallows the error (as an offline fallback would), the test fails."
    shutil.copy(Path(__file__).with_name('conftest.py'), pytester.path/'conftest.py')
    pytester.makepyfile(test_x='''
import socket
def test_sneaky():
    try: socket.create_connection(('example.org', 443), timeout=1)
    except OSError: pass
''')
    r = pytester.runpytest_inprocess('-p', 'no:cacheprovider', '-p', 'no:xdist')
    r.assert_outcomes(passed=1, errors=1)
    assert 'tests make no network connection' in r.stdout.str()
