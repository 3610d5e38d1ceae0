"""The public links of a request, built in one place from API_BASE_URL.

Every process behind a load balancer must give the same links (they go into
webhook bodies and stored events), so they come from the configured base
URL, never from the address a process happens to listen on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Links:
    base_url: str  # e.g. https://images.example.com, no trailing slash

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def status(self, request_id: str) -> str:
        return f"{self.base_url}/api/v1/requests/{request_id}"

    def cancel(self, request_id: str) -> str:
        return f"{self.status(request_id)}/cancel"

    def output_csv(self, request_id: str) -> str:
        return f"{self.base_url}/api/v1/output/{request_id}.csv"

    def images(self, request_id: str) -> str:
        return f"{self.status(request_id)}/images"

    def failures_csv(self, request_id: str) -> str:
        return f"{self.status(request_id)}/failures.csv"

    def thumbnail(self, request_id: str, row: int, position: int) -> str:
        """An output image's thumbnail (0-based row and position in; the link numbers
        both from 1, as the API's products and images do)."""
        return f"{self.status(request_id)}/thumbnails/{row + 1}-{position + 1}.jpg"

    def requests(self, query: str = "") -> str:
        """The list of requests; `query` is an encoded query string, without its `?`."""
        return f"{self.base_url}/api/v1/requests" + (f"?{query}" if query else "")
