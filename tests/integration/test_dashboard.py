"""The Dask dashboard answers, and tasks carry names a person watching it can read."""

from __future__ import annotations

import json

import pytest
from distributed import Client

from tests import imagefactory as images
from tests.integration.service import Service

pytestmark = pytest.mark.integration


def seen_tasks(dask_scheduler) -> tuple[list[str], list[str]]:
    # Runs on the scheduler: the task groups the dashboard shows, and every key it ran.
    keys = {str(entry[0]) for entry in dask_scheduler.transition_log}
    return sorted(dask_scheduler.task_prefixes), sorted(keys)


def test_dashboard_link_answers_and_tasks_are_named(tmp_path, image_server):
    service = Service(tmp_path / "data", DASK_DASHBOARD_ADDRESS="127.0.0.1:0").start()
    try:
        health = service.get_json("/health")
        dashboard = health["dask"]["dashboard"]
        assert dashboard.startswith("http://127.0.0.1:") and dashboard.endswith("/status")
        page = service.get(dashboard)
        assert page.status == 200 and b"Dask" in page.data

        url = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
        response = service.upload(f"S. No.,Product Name,Input Image Urls\n1,Lamp,{url}\n".encode())
        request_id = json.loads(response.data)["request_id"]
        final, _ = service.wait_final(request_id)
        assert final["dashboard_url"] == dashboard  # in every status response too

        with Client(health["dask"]["scheduler"], timeout="20s") as client:
            prefixes, keys = client.run_on_scheduler(seen_tasks)
        # The task stream groups by stage; hovering a task shows its request.
        assert {"stage-manifest", "process-batch"} <= set(prefixes)
        assert f"stage-manifest-{request_id}" in keys
        assert f"process-batch-{request_id}-0" in keys
    finally:
        service.stop()
