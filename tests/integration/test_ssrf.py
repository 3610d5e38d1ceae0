"""Hostile URLs against the real fetcher and webhook pool, on loopback only.

127.0.0.2 plays "the public internet" (the address policy is told it is
public); the ImageServer on 127.0.0.1 is the internal service an attacker
wants to reach, and its `hits` prove whether anything got there. Names are
answered by a fake DNS, so nothing here leaves the machine.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Callable

import pytest
import urllib3

from pipeline.errors import AddressRefused, FetchError
from pipeline.fetch import FetchConfig, Fetcher
from pipeline.netguard import guarded_pool, is_public_address
from pipeline.notify import WebhookSender
from tests.addresses import check_url
from tests.tls import client_context, server_context

pytestmark = pytest.mark.integration

PUBLIC = "127.0.0.2"
# Reasons that mean "refused before any byte went to a forbidden address".
BLOCKED = re.compile(r"^(refused|scheme .* is not allowed|URL has no host|malformed URL)")


def internet_policy(address: str) -> bool:
    return address == PUBLIC or is_public_address(address)


class HostileDns:
    """Names from a table (a list of answers is used one lookup at a time: rebinding);
    numeric hosts are parsed by the real getaddrinfo, never sent to a DNS server."""

    def __init__(self, names: dict[str, list[list[str]]]):
        self.names = names
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int, type: int = 0, **_: object):
        self.lookups.append(host)
        key = host.lower().rstrip(".")  # as lenient as a sloppy resolver can be
        if key in self.names:
            answers = self.names[key]
            addresses = answers.pop(0) if len(answers) > 1 else answers[0]
            return [_info(address, port) for address in addresses]
        flags = socket.AI_NUMERICHOST
        return socket.getaddrinfo(key, port, type=socket.SOCK_STREAM, flags=flags)


def _info(address: str, port: int) -> tuple:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
    return (family, socket.SOCK_STREAM, 6, "", sockaddr)


class PublicServer:
    """A 'public' web server on 127.0.0.2: redirects and images, by path."""

    def __init__(self, port: int):
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer((PUBLIC, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = (status, {"Location": location}, b"")
        return path


@pytest.fixture
def public_server(image_server):
    # Same port as the internal server, so a rebound name reaches one or the other.
    server = PublicServer(image_server.server.server_address[1])
    yield server
    server.server.shutdown()
    server.server.server_close()


def hostile_corpus(internal: str, port: int, public: PublicServer) -> list[str]:
    """URLs that must never reach the internal server, metadata or anything private."""
    secret = f"{internal}/secret"
    p = port
    direct = [
        f"http://127.0.0.1:{p}/secret", f"http://2130706433:{p}/secret",
        f"http://0177.0.0.1:{p}/secret", f"http://0x7f.1:{p}/secret",
        f"http://127.1:{p}/secret", f"http://0x7f000001:{p}/secret",
        f"http://017700000001:{p}/secret", f"http://127.0.0.1.:{p}/secret",
        f"http://%31%32%37.0.0.1:{p}/secret", f"http://0:{p}/secret",
        f"http://0.0.0.0:{p}/secret", f"HTTP://127.0.0.1:{p}/secret",
        f"http://[::1]:{p}/secret", f"http://[::ffff:127.0.0.1]:{p}/secret",
        f"http://[::ffff:7f00:1]:{p}/secret", f"http://[::127.0.0.1]:{p}/secret",
        f"http://[64:ff9b::7f00:1]:{p}/secret", f"http://[2002:7f00:1::]:{p}/secret",
        f"http://[::]:{p}/secret", "http://[fd00::1]/", "http://[fe80::1]/",
        "http://[ff02::1]/", "http://[fd00:ec2::254]/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/",
        "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.1.1/",
        "http://224.0.0.1/", "http://255.255.255.255/", "http://198.18.0.1/",
        f"http://localhost:{p}/secret", f"http://LOCALHOST:{p}/secret",
        f"http://images.localhost:{p}/secret", f"http://localhost.:{p}/secret",
        f"http://internal.test:{p}/secret", f"http://internal.test.:{p}/secret",
        "http://metadata.test/latest/meta-data/", f"http://mixed.test:{p}/secret",
        f"http://example.com@127.0.0.1:{p}/secret", f"http://user:pw@127.0.0.1:{p}/secret",
        f"http://127.0.0.1:{p}\\@public.test/secret", f"http://public.test:{p}@127.0.0.1:{p}/",
        "file:///etc/passwd", f"gopher://127.0.0.1:{p}/_GET%20/secret", "ftp://127.0.0.1/",
        "javascript:alert(1)", "data:image/png;base64,iVBORw0KGgo=", f"dict://127.0.0.1:{p}/",
        f"http://rebind.test:{p}/secret",
    ]  # fmt: skip
    targets = [
        secret, f"http://2130706433:{p}/secret", f"http://[::1]:{p}/secret",
        f"//127.0.0.1:{p}/secret", f"http://localhost:{p}/secret",
        "http://169.254.169.254/latest/meta-data/iam/", f"http://internal.test:{p}/secret",
        "file:///etc/passwd", f"gopher://127.0.0.1:{p}/_x",
    ]  # fmt: skip
    redirects = []
    for n, target in enumerate(targets):
        status = (301, 302, 303, 307, 308)[n % 5]
        redirects.append(f"http://public.test:{p}{public.redirect(f'/r{n}', target, status)}")
    # A chain: public -> public -> internal.
    public.redirect("/chain1", f"http://public.test:{p}/chain2")
    public.redirect("/chain2", secret)
    redirects.append(f"http://public.test:{p}/chain1")
    return direct + redirects


def corpus_dns() -> HostileDns:
    return HostileDns(
        {
            "public.test": [[PUBLIC]],
            "internal.test": [["127.0.0.1"]],
            "metadata.test": [["169.254.169.254"]],
            "mixed.test": [[PUBLIC, "10.0.0.1"]],
            # First lookup public (the server answers 503, so the fetcher
            # reconnects), every later one loopback: DNS rebinding.
            "rebind.test": [[PUBLIC], ["127.0.0.1"]],
        }
    )


def test_hostile_url_corpus_gets_nothing_through(image_server, public_server):
    image_server.add("/secret", b"internal data")
    public_server.routes["/secret"] = (503, {}, b"")
    public_server.routes["/ok.jpg"] = (200, {}, b"public image")
    port = image_server.server.server_address[1]
    corpus = hostile_corpus(image_server.base_url, port, public_server)
    config = FetchConfig(backoff=0, retries=1, total_timeout=5)

    def fetcher(dns: HostileDns) -> Fetcher:
        pool = guarded_pool(False, dns, is_allowed=internet_policy, retries=False)
        return Fetcher(config, pool)

    # The control: the same set-up fetches a public image, so refusals are not an accident.
    assert fetcher(corpus_dns()).fetch(f"http://public.test:{port}/ok.jpg") == b"public image"

    got_through: dict[str, str] = {}
    for url in corpus:
        try:
            body = fetcher(corpus_dns()).fetch(url)
            got_through[url] = f"fetched {len(body)} bytes"
        except FetchError as exc:
            if not BLOCKED.match(exc.reason):
                got_through[url] = exc.reason
    print(f"hostile URLs tried: {len(corpus)}, got through: {len(got_through)}")
    assert len(corpus) >= 50
    assert got_through == {}
    assert image_server.hits == {}


def test_rebinding_between_check_and_connect_is_caught(image_server):
    """The check sees a public answer, the connection would get loopback: refused."""
    url = image_server.add("/secret", b"internal data").replace("127.0.0.1", "rebind.test")
    dns = HostileDns({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    check_url(url, allow_private=False, resolve=dns)  # first answer: looks public
    with pytest.raises(AddressRefused, match=r"non-public address 127\.0\.0\.1"):
        guarded_pool(False, dns, retries=False).request("GET", url, retries=False)
    assert dns.lookups == ["rebind.test", "rebind.test"]
    assert image_server.hits == {}


def test_peer_address_is_checked_after_connect(image_server, monkeypatch):
    """Even if the socket layer connects somewhere else, the peer is what is judged."""
    url = image_server.add("/secret", b"internal data")
    dns = HostileDns({"public.test": [[PUBLIC]]})
    real_connect = socket.socket.connect

    def misrouted(sock: socket.socket, address: tuple) -> None:
        real_connect(sock, ("127.0.0.1", address[1]))

    monkeypatch.setattr(socket.socket, "connect", misrouted)
    pool = guarded_pool(False, dns, is_allowed=internet_policy, retries=False)
    with pytest.raises(AddressRefused, match=r"connected to 127\.0\.0\.1"):
        pool.request("GET", url.replace("127.0.0.1", "public.test"), retries=False)
    assert image_server.hits == {}


def test_webhook_pool_refuses_private_addresses(webhook_receiver):
    sender = WebhookSender(timeout=2)
    attempt = sender.send(webhook_receiver.url, "msg_1", b'{"event":"request.completed"}')
    assert attempt.outcome == "give_up"  # a refused address is not retried
    assert attempt.error is not None and "non-public" in attempt.error
    with pytest.raises(AddressRefused):
        sender.pool.request("POST", webhook_receiver.url, body=b"{}", retries=False)
    assert webhook_receiver.deliveries == []
    allowed = WebhookSender(timeout=5, allow_private_networks=True)
    assert allowed.send(webhook_receiver.url, "msg_2", b'{"event":"x"}').outcome == "delivered"


def test_private_networks_switch_still_fetches_loopback(image_server):
    url = image_server.add("/a.jpg", b"img")
    assert Fetcher(FetchConfig(allow_private_networks=True)).fetch(url) == b"img"
    with pytest.raises(AddressRefused):
        Fetcher(FetchConfig()).fetch(url)
    assert image_server.hits == {"/a.jpg": 1}


# TLS: the socket is connected to a pinned IP, but SNI and certificate
# verification must still use the URL's hostname.


@pytest.fixture
def tls_server(tmp_path):
    context, ca = server_context("images.test", tmp_path)
    seen: dict[str, list] = {"sni": [], "host": []}
    context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen["host"].append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"img")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], ca, seen
    server.shutdown()
    server.server_close()


def test_tls_verifies_the_hostname_not_the_pinned_ip(tls_server):
    port, ca, seen = tls_server
    dns: Callable = HostileDns({"images.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    pool = guarded_pool(True, dns, ssl_context=client_context(ca), retries=False)
    response = pool.request("GET", f"https://images.test:{port}/a.jpg", retries=False)
    assert (response.status, response.data) == (200, b"img")
    assert seen["sni"] == ["images.test"]
    assert seen["host"] == [f"images.test:{port}"]
    # Same pinned address, a name the certificate does not cover: verification fails.
    with pytest.raises(urllib3.exceptions.SSLError, match=r"(?i)hostname"):
        pool.request("GET", f"https://other.test:{port}/a.jpg", retries=False)
