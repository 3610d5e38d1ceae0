import socket
import threading

import pytest

from pipeline.errors import AddressRefused, FetchError
from pipeline.netguard import is_public_address, validate_url
from tests.addresses import check_url


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
        # Ranges some Python releases call global, and IPv6 forms embedding IPv4.
        "192.0.0.8",
        "198.18.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        # IPv4-translated (::ffff:0:0:0/96): the metadata address, loopback, private.
        "::ffff:0:a9fe:a9fe",
        "::ffff:0:169.254.169.254",
        "::ffff:0:7f00:1",
        "::ffff:0:a00:1",
        "::ffff:0:0:0",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "fec0::1",
        "ff02::1",
        "fe80::1%eth0",
        "fd00:ec2::254",
    ],
)
def test_non_public_addresses(address):
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "2606:2800:220:1:248:1893:25c8:1946",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",  # NAT64 of a public address
        "::ffff:0:5db8:d822",  # IPv4-translated public address: judged by the IPv4 too
    ],
)
def test_public_addresses(address):
    assert is_public_address(address)


def test_translated_metadata_address_refused_when_a_host_resolves_to_it():
    def resolve(host, port, type=0):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:0:a9fe:a9fe", port, 0, 0))]

    with pytest.raises(AddressRefused, match=r"non-public address ::ffff:0:a9fe:a9fe"):
        check_url("http://images.example.com/a.jpg", allow_private=False, resolve=resolve)
    with pytest.raises(AddressRefused, match="non-public"):
        check_url("http://[::ffff:0:a9fe:a9fe]/latest/meta-data/", allow_private=False)


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


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "img.localhost"])
def test_localhost_names_refused_whatever_dns_says(host):
    with pytest.raises(AddressRefused, match="is this machine"):
        check_url(f"http://{host}/a.jpg", allow_private=False, resolve=resolver("93.184.216.34"))


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://example.com@127.0.0.1/", "credentials"),
        ("http://user:pw@images.example.com/", "credentials"),
        ("http://127.0.0.1\\@images.example.com/", "credentials"),
        ("http://%31%32%37.0.0.1/", "ambiguous host"),
        ("javascript:alert(1)", "scheme"),
        ("data:image/png;base64,AAAA", "scheme"),
        ("ftp://images.example.com/a.jpg", "scheme"),
    ],
)
def test_validate_url_refuses_confusing_urls(url, needle):
    with pytest.raises(FetchError, match=needle):
        validate_url(url)


def test_validate_url_returns_scheme_host_and_default_port():
    assert validate_url("https://Images.Example.com./a.jpg") == (
        "https",
        "images.example.com.",
        443,
    )
    assert validate_url("http://[2606:2800::1]:8080/") == ("http", "2606:2800::1", 8080)
    assert validate_url("http://bücher.example/a.jpg")[1] == "bücher.example"


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0"])
def test_numeric_spellings_are_judged_by_what_getaddrinfo_makes_of_them(host):
    # The real resolver, numeric only: no DNS query leaves the machine.
    def numeric(host, port, type=0):
        return socket.getaddrinfo(host, port, type=type, flags=socket.AI_NUMERICHOST)

    with pytest.raises(AddressRefused, match=r"non-public address (127\.0\.0\.1|0\.0\.0\.0)"):
        check_url(f"http://{host}/a.jpg", allow_private=False, resolve=numeric)


def test_a_late_lookup_says_how_much_time_it_had():
    # 29.8 s of a 30 s download already spent (a retry, a redirect hop) when the lookup starts.
    from pipeline.exchange import Alarm, Exchange
    from pipeline.netguard import AddressGuard

    released = threading.Event()

    def silent(host, port, type=0):
        released.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    now = [0.0]
    guard = AddressGuard(allow_private=True, resolve=silent)
    try:
        with Exchange(30.0, alarm=Alarm(clock=lambda: now[0])):
            now[0] = 29.8
            with pytest.raises(FetchError) as caught:
                guard.resolve("slow.test", 80)
    finally:
        released.set()
    left = "no answer in the 0.2s left of 30s"
    assert caught.value.reason == f"cannot resolve host 'slow.test': {left}"
    assert caught.value.transient
