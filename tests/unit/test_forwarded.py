"""The client behind trusted proxies: the rightmost X-Forwarded-For hop not ours."""

from __future__ import annotations

import pytest

from api.forwarded import client_address
from pipeline.settings import parse_networks

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.7")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # No proxy configured in the path: the peer, whatever the header says.
        ("172.16.5.5", "198.51.100.9", "172.16.5.5"),
        ("172.16.5.5", None, "172.16.5.5"),
        # From our load balancer: the address it appended.
        ("10.0.0.2", "198.51.100.9", "198.51.100.9"),
        ("192.168.1.7", "198.51.100.9", "198.51.100.9"),
        # Two of our proxies in a row: walked past.
        ("10.0.0.2", "198.51.100.9, 10.1.2.3", "198.51.100.9"),
        # Entries the client wrote itself sit to the left: never believed.
        ("10.0.0.2", "127.0.0.1, 203.0.113.50, 198.51.100.9", "198.51.100.9"),
        # Ports and brackets as some proxies write them; IPv6 normalised.
        ("10.0.0.2", "198.51.100.9:51234", "198.51.100.9"),
        ("10.0.0.2", "[2001:DB8::0:1]:443", "2001:db8::1"),
        ("10.0.0.2", "2001:db8::1", "2001:db8::1"),
        # A malformed hop was not written by one of ours: the last good hop stands.
        ("10.0.0.2", "198.51.100.9, not-an-address", "10.0.0.2"),
        ("10.0.0.2", "garbage, 10.1.2.3", "10.1.2.3"),
        # Every hop ours (a check from inside): the leftmost of them.
        ("10.0.0.2", "10.9.9.9", "10.9.9.9"),
        # IPv4 written as IPv6 (a dual-stack socket's peer, a proxy's hop) is IPv4.
        ("::ffff:10.0.0.2", "198.51.100.9", "198.51.100.9"),
        ("10.0.0.2", "198.51.100.9, ::ffff:10.0.0.3", "198.51.100.9"),
        ("10.0.0.2", "::ffff:198.51.100.9", "198.51.100.9"),
        # Our proxy without the header: itself.
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "", "10.0.0.2"),
    ],
)
def test_client_address(peer, forwarded_for, client):
    assert client_address(peer, forwarded_for, PROXIES) == client


def test_without_trusted_proxies_the_header_means_nothing():
    assert client_address("10.0.0.2", "198.51.100.9", ()) == "10.0.0.2"


def test_parse_networks():
    assert [str(n) for n in parse_networks(" 10.0.0.0/8 ,, 192.168.1.7,::1 ")] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "::1/128",
    ]
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an address or a network"):
        parse_networks("10.0.0.0/33")
