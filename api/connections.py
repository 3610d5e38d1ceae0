"""How the API's server holds its connections: waitress's options, and room for them.

waitress reads and writes every connection in one event loop and hands each
complete request to one of a few threads. A connection that is open but sends
nothing costs a slot and a file descriptor, never a thread; what runs out is
the slots (`connection_limit`: at the limit waitress stops accepting, and
everyone else waits in the kernel's backlog) and the descriptors. So the
limit is set high, idle connections are closed soon, and the process's
open-file limit is raised to fit before the server starts.

What stays true whatever the numbers: waitress's idle timer restarts at every
byte, so a client that drips one byte a second keeps its connection for as
long as it likes. Against many such clients only a reverse proxy with a
deadline for the whole header helps (README "Behind a reverse proxy").

What waitress refuses itself never reaches the app: a body over
`max_request_body_size` (refused from its declared length before a byte of it
is read, or as a chunked one passes the limit), headers over the limit, a
request it cannot parse. `JsonErrorChannel` gives those answers the app's own
shape, a JSON body with a title and a description (`refusal`), and an access
log line, without changing when or how waitress refuses.

`plan_descriptors`, `waitress_options` and `refusal` are pure; `make_room` is the I/O.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import cast

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import ErrorTask

from api.access_log import ACCESS_LOGGER, access_line
from api.uploads import FORM_OVERHEAD_BYTES
from pipeline.settings import MIN_API_CONNECTION_LIMIT, Settings

# waitress: "Each channel consumes at least one file descriptor, and, depending on
# the input and output body sizes, potentially up to three" (its socket, a request
# body past `inbuf_overflow` and a response past `outbuf_overflow` spill to files).
FDS_PER_CONNECTION = 3
# Everything else the process opens: ~40 at rest (measured: the embedded Dask
# cluster's comms, SQLite, logs), plus pools that grow under load (MongoDB's up to
# 100, S3's, webhook deliveries, NATS).
FD_RESERVE = 512

# Bytes per read from a socket. The event loop visits every open connection on
# each turn and reads once per readable connection: with 2,000 connections open a
# turn takes ~1.2 ms (measured), so an upload read 8 KiB a turn (waitress's default)
# arrives at ~7 MB/s; 64 KiB a turn takes a 20 MB upload in 0.55 s instead of 3 s.
RECV_BYTES = 64 * 1024
# What one connection can make the process hold in memory while it dawdles:
# its header (waitress's default 256 KiB; 32 KiB is nginx's whole default) and
# the start of its body (512 KiB by default; past this it goes to a temporary
# file). With 2,000 connections that is at most 250 MB, not 1.5 GB.
MAX_HEADER_BYTES = 64 * 1024
BODY_IN_MEMORY_BYTES = 64 * 1024
# Connections the kernel completes while waitress is at its limit or busy,
# waiting to be accepted (Linux also caps it at net.core.somaxconn).
BACKLOG = 1024
# How often waitress looks for connections idle past the channel timeout. One
# pass over 2,000 connections is well under a millisecond, so every second: an
# idle connection is closed within a second of its timeout, not 30 (the default).
CLEANUP_INTERVAL = 1

_INFINITE = -1  # resource.RLIM_INFINITY on Linux and macOS


@dataclass(frozen=True)
class DescriptorPlan:
    connection_limit: int  # what waitress is given
    new_soft_limit: int | None  # RLIMIT_NOFILE's soft limit to set; None: leave it
    note: str  # what was decided and why, for the start-up log
    warning: bool = False


def descriptors_needed(connection_limit: int) -> int:
    return connection_limit * FDS_PER_CONNECTION + FD_RESERVE


def plan_descriptors(
    connection_limit: int, soft: int, hard: int, infinity: int = _INFINITE
) -> DescriptorPlan:
    """The open-file limit the connection limit needs, and what to do when it is short."""
    needed = descriptors_needed(connection_limit)
    why = f"API_CONNECTION_LIMIT={connection_limit} needs {needed}"
    if soft == infinity or soft >= needed:
        return DescriptorPlan(connection_limit, None, f"soft limit {_show(soft, infinity)} ({why})")
    # An unlimited hard limit is not a value setrlimit takes for the soft one on
    # every system (macOS refuses it), so ask for what is needed.
    ceiling = needed if hard == infinity else hard
    raised = ceiling if ceiling > soft else None
    if ceiling >= needed:
        return DescriptorPlan(
            connection_limit, raised, f"soft limit raised from {soft} to {ceiling} ({why})"
        )
    # Fewer slots rather than a process that runs out of descriptors: waitress
    # would spin on accept() errors, and SQLite, Dask and storage would fail.
    fits = max(MIN_API_CONNECTION_LIMIT, (ceiling - FD_RESERVE) // FDS_PER_CONNECTION)
    now = f"soft limit raised from {soft} to {ceiling}" if raised else f"soft limit {soft}"
    return DescriptorPlan(
        min(connection_limit, fits),
        raised,
        f"{now}, the most allowed, but {why}: accepting at most {fits} connections "
        "(raise the hard limit: ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=)",
        warning=True,
    )


def make_room(connection_limit: int, log: logging.Logger) -> int:
    """Raise the open-file soft limit as far as the connection limit needs; the limit to use."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return connection_limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_descriptors(connection_limit, soft, hard, resource.RLIM_INFINITY)
    if plan.new_soft_limit is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.new_soft_limit, hard))
        except (ValueError, OSError) as exc:
            # e.g. macOS's kern.maxfilesperproc below the hard limit: plan within the
            # soft limit as it is.
            plan = plan_descriptors(connection_limit, soft, soft, resource.RLIM_INFINITY)
            plan = DescriptorPlan(
                plan.connection_limit, None, f"{plan.note}; raising it failed: {exc}", True
            )
    (log.warning if plan.warning else log.info)("api open files: %s", plan.note)
    return plan.connection_limit


def waitress_options(settings: Settings, connection_limit: int) -> dict[str, object]:
    """waitress.serve's keyword arguments for connections (the app's own come from serve)."""
    return {
        "threads": settings.api_threads,
        "connection_limit": connection_limit,
        "channel_timeout": settings.api_channel_timeout,
        "cleanup_interval": CLEANUP_INTERVAL,
        # select() cannot watch a descriptor numbered 1024 or more (FD_SETSIZE): past
        # that, waitress's loop raises and the server stops. poll() has no such bound.
        "asyncore_use_poll": True,
        "recv_bytes": RECV_BYTES,
        "backlog": BACKLOG,
        "max_request_header_size": MAX_HEADER_BYTES,
        "inbuf_overflow": BODY_IN_MEMORY_BYTES,
        # waitress drops X-Forwarded-* headers unless it trusts the peer itself; with
        # TRUSTED_PROXIES the app judges them (api/forwarded.py: only from those peers).
        "clear_untrusted_proxy_headers": not settings.trusted_proxy_networks,
    }


def connections_summary(settings: Settings, connection_limit: int) -> str:
    """One log line: how connections are held and how to change it."""
    return (
        f"up to {connection_limit} open (API_CONNECTION_LIMIT), closed after "
        f"{settings.api_channel_timeout} s with nothing sent either way "
        f"(API_CHANNEL_TIMEOUT), requests run on {settings.api_threads} threads (API_THREADS)"
    )


# Titles as api/errors.py words them.
_TITLES = {
    400: "Bad request",
    413: "Payload too large",
    431: "Request headers too large",
    500: "Internal server error",
    501: "Not implemented",
}


def refusal(code: int, detail: str, adj: Adjustments, declared_length: int) -> dict[str, str]:
    """The JSON body of an answer waitress gives itself; `detail` is waitress's own text."""
    if code == 413:
        # waitress's limit is the CSV's plus room for the form (api.uploads.max_body_bytes).
        limit = adj.max_request_body_size - FORM_OVERHEAD_BYTES
        size = f"{declared_length:,} bytes" if declared_length else "over the limit"
        description = (
            f"the upload is {size}; the limit is {limit:,} bytes for the CSV "
            "(MAX_UPLOAD_BYTES); split the file"
        )
    elif code == 431:
        description = (
            f"the request's headers are over {adj.max_request_header_size:,} bytes; "
            "send fewer or shorter headers"
        )
    elif code == 500:
        description = "the server failed while answering; try again, and report it if it persists"
    else:
        description = f"the server could not read this HTTP request: {detail.rstrip('.')}"
    return {"title": _TITLES.get(code, "Bad request"), "description": description}


class JsonErrorTask(ErrorTask):
    """waitress's answer to what it refuses itself, as JSON (its own is plain text)."""

    def execute(self) -> None:
        # waitress gives an ErrorTask the request's parser, its `error` set (HTTPChannel.
        # service); the waitress stubs say `request` is that Error.
        request = cast(HTTPRequestParser, self.request)
        error = request.error
        assert error is not None
        body = json.dumps(
            refusal(error.code, str(error.body), self.channel.adj, request.content_length)
        ).encode()
        self.status = f"{error.code} {error.reason}"
        # A list (Task.__init__); the waitress stubs say Sequence.
        self.response_headers.append(("Content-Type", "application/json"))  # type: ignore[attr-defined]
        self.set_close_on_finish()  # what is left of the body is never read
        self.content_length = len(body)
        self.write(body)
        addr = self.channel.addr
        # A request refused before its first line was parsed has no method or path yet.
        line = access_line(
            addr[0] if isinstance(addr, tuple) else None,
            getattr(request, "command", None),
            getattr(request, "path", None),
            getattr(request, "query", None),
            error.code,
            None,
            len(body),
        )
        logging.getLogger(ACCESS_LOGGER).info("%s", line)


class JsonErrorChannel(HTTPChannel):
    """A connection whose refusals are `JsonErrorTask`s (waitress's hook for it)."""

    error_task_class = JsonErrorTask


def _show(limit: int, infinity: int) -> str:
    return "unlimited" if limit == infinity else str(limit)
