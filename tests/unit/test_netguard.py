import socket

import pytest

from pipeline.errors import FetchError
from pipeline.netguard import check_url, is_public_address


def resolver(*addresses):
    def resolve(host, port, type=0):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "100.64.0.1",
    ],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses(address):
    assert is_public_address(address)


def test_refuses_host_resolving_to_private_address():
    with pytest.raises(FetchError, match=r"non-public address 10\.0\.0\.5"):
        check_url(
            "http://images.example.com/a.jpg",
            allow_private=False,
            resolve=resolver("93.184.216.34", "10.0.0.5"),
        )


def test_accepts_public_host_and_private_when_allowed():
    check_url(
        "https://images.example.com/a.jpg", allow_private=False, resolve=resolver("93.184.216.34")
    )
    check_url("http://127.0.0.1:9/a.jpg", allow_private=True, resolve=resolver())


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://x/", "scheme"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "malformed"),
    ],
)
def test_refuses_bad_urls_even_when_private_allowed(url, needle):
    with pytest.raises(FetchError, match=needle):
        check_url(url, allow_private=True, resolve=resolver("93.184.216.34"))


def test_loopback_literal_refused_by_default():
    with pytest.raises(FetchError, match="non-public"):
        check_url("http://127.0.0.1:8080/x.jpg", allow_private=False)
