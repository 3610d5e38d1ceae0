"""Where the embedded cluster's dashboard listens (DASK_DASHBOARD_ADDRESS against HOST)."""

from __future__ import annotations

import pytest

from pipeline.cluster import dashboard_listen
from pipeline.errors import ConfigError


@pytest.mark.parametrize(
    ("address", "api_host", "listen"),
    [
        # A port alone, the default's shape: Dask would take every interface; it
        # binds where the API binds instead.
        (":8787", "127.0.0.1", [("127.0.0.1", 8787)]),
        ("8787", "127.0.0.1", [("127.0.0.1", 8787)]),
        (":0", "::1", [("::1", 0)]),
        (":8787", "0.0.0.0", [("0.0.0.0", 8787)]),  # containers: HOST=0.0.0.0
        (":8787,:8788", "127.0.0.1", [("127.0.0.1", 8787), ("127.0.0.1", 8788)]),
        # A host a user gave is kept, whatever HOST says.
        ("0.0.0.0:8787", "127.0.0.1", [("0.0.0.0", 8787)]),
        ("10.1.2.3:8787", "127.0.0.1", [("10.1.2.3", 8787)]),
        ("[::]:8787", "127.0.0.1", [("::", 8787)]),
        ("localhost:0", "0.0.0.0", [("localhost", 0)]),
    ],
)
def test_a_bare_port_binds_the_api_host_and_a_given_host_is_kept(address, api_host, listen):
    assert dashboard_listen(address, api_host) == listen


@pytest.mark.parametrize("address", ["", "  "])
def test_empty_turns_the_dashboard_off(address):
    assert dashboard_listen(address, "127.0.0.1") is None


@pytest.mark.parametrize("address", ["dashboard", "host:", ":http", ":65536", ":-1"])
def test_a_malformed_address_is_a_configuration_error(address):
    with pytest.raises(ConfigError, match="DASK_DASHBOARD_ADDRESS"):
        dashboard_listen(address, "127.0.0.1")
