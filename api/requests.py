"""Requests as resources many users share: list them, cancel one, delete one.

`/api/v1/requests` lists the caller's requests (everyone's when the API runs
without keys); `/api/v1/requests/{id}` is a request's status (GET, as the older
`/api/v1/status/{id}`) and its removal (DELETE); `/api/v1/requests/{id}/cancel`
asks the driver to stop it. Another key's request does not exist here either.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlencode

import falcon

from api.auth import ApiKeys
from api.errors import InvalidParam
from api.resources import PATHS, RequestStatusResource, readable_request, status_body
from pipeline.clock import Clock, utc_now
from pipeline.errors import AlreadyFinished
from pipeline.links import Links
from pipeline.models import RequestStatus
from pipeline.records.base import RecordStore
from pipeline.removal import remove_request

DEFAULT_LIST_PER_PAGE = 20
MAX_LIST_PER_PAGE = 100
# Far beyond any real listing, and small enough that an offset always fits a store's
# 64-bit integers.
MAX_LIST_PAGE = 1_000_000
STATUS_NAMES = ", ".join(s.value for s in RequestStatus)


class Canceller(Protocol):
    def cancel(self, request_id: str) -> None: ...


class Requests:
    """GET: a page of requests, newest first, optionally of some statuses."""

    def __init__(
        self,
        store: RecordStore,
        *,
        base_url: str,
        keys: ApiKeys,
        dashboard_url: str | None = None,
        clock: Clock = utc_now,
    ):
        self.store = store
        self.base_url = base_url
        self.keys = keys
        self.dashboard_url = dashboard_url
        self.clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        statuses = requested_statuses(req.get_param_as_list("status") or [])
        page = req.get_param_as_int("page", min_value=1, max_value=MAX_LIST_PAGE, default=1)
        per_page = req.get_param_as_int(
            "per_page", min_value=1, max_value=MAX_LIST_PER_PAGE, default=DEFAULT_LIST_PER_PAGE
        )
        # With keys, only the caller's own requests; without, the API is open to all.
        owner = self.keys.owner(req) if self.keys.required else None
        records, total = self.store.list_requests(
            owner=owner, statuses=statuses, offset=(page - 1) * per_page, limit=per_page
        )
        more = page * per_page < total and page < MAX_LIST_PAGE
        now = self.clock()
        resp.media = {
            "requests": [
                status_body(r, self.base_url, self.dashboard_url, now=now) for r in records
            ],
            "page": {
                "page": page,
                "per_page": per_page,
                "total": total,
                "next": self._page_url(statuses, page + 1, per_page) if more else None,
            },
        }
        resp.cache_control = ["no-store"]

    def _page_url(self, statuses: list[RequestStatus], page: int, per_page: int) -> str:
        query = [("status", ",".join(statuses))] if statuses else []
        query += [("page", str(page)), ("per_page", str(per_page))]
        return Links(self.base_url).requests(urlencode(query, safe=","))


class Request(RequestStatusResource):
    """GET: the request's status (see RequestStatusResource). DELETE: remove a final
    request, its stored objects first, then its records."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        readable_request(self.store, self.keys, req, request_id)
        remove_request(self.store, self.storage, request_id)
        resp.status = falcon.HTTP_204


class Cancellation:
    """POST: record a cancel and tell this process's driver; the request ends
    `cancelled` shortly after (nothing new starts, batches in flight may finish)."""

    def __init__(
        self,
        store: RecordStore,
        runner: Canceller,
        *,
        base_url: str,
        keys: ApiKeys,
        clock: Clock,
        dashboard_url: str | None = None,
    ):
        self.store = store
        self.runner = runner
        self.base_url = base_url
        self.keys = keys
        self.clock = clock
        self.dashboard_url = dashboard_url

    def on_post(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        record = readable_request(self.store, self.keys, req, request_id)
        if not self.store.request_cancel(request_id, self.clock()):
            # It may have finished since it was read: name the status it has now.
            record = self.store.get_request(request_id) or record
            raise AlreadyFinished(
                f"Request {request_id} is {record.status}; only an unfinished request "
                "can be cancelled.",
                request_id=request_id,
                status=str(record.status),
            )
        self.runner.cancel(request_id)
        record = self.store.get_request(request_id) or record
        resp.status = falcon.HTTP_202
        resp.location = PATHS.status(request_id)
        resp.media = status_body(record, self.base_url, self.dashboard_url, now=self.clock())
        resp.cache_control = ["no-store"]


def requested_statuses(values: list[str]) -> list[RequestStatus]:
    """`?status=a&status=b` and `?status=a,b` alike; 400 naming an unknown one."""
    statuses: list[RequestStatus] = []
    for value in (v.strip() for raw in values for v in raw.split(",")):
        if not value:
            continue
        try:
            status = RequestStatus(value)
        except ValueError:
            raise InvalidParam(
                "status",
                f"{value!r} is not a request status; use one or more of: {STATUS_NAMES}",
            ) from None
        if status not in statuses:
            statuses.append(status)
    return statuses
