"""S3 storage for real: moto in server mode on loopback is the S3 endpoint.

The service (waitress subprocess, Dask worker processes) talks to it over
HTTP exactly as it would to AWS, MinIO or R2.
"""

from __future__ import annotations

import csv
import io
import json
import re

import boto3
import pytest
import urllib3
from PIL import Image

from pipeline.storage import Storage, public_read_policy, storage_config
from tests import imagefactory as images
from tests.integration.service import Service

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_endpoint, s3_credentials, request):
    name = "imagepipe-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_storage(endpoint: str, bucket: str, **kwargs) -> Storage:
    return Storage(storage_config(f"s3://{bucket}/outputs", "", endpoint, **kwargs))


def anonymous_get(url: str) -> urllib3.BaseHTTPResponse:
    """What anyone who learns a URL can do: a GET without credentials or signature."""
    return urllib3.request("GET", url, retries=False, timeout=10)


def apply_documented_policy(endpoint: str, bucket: str) -> None:
    """The bucket policy the README gives for OUTPUT_URL_MODE=public (compose sets it too)."""
    policy = public_read_policy(f"s3://{bucket}/outputs")
    boto3.client("s3", endpoint_url=endpoint).put_bucket_policy(
        Bucket=bucket, Policy=json.dumps(policy)
    )


def test_storage_round_trip_and_urls(s3_endpoint, bucket):
    storage = s3_storage(s3_endpoint, bucket)
    assert not storage.is_local
    storage.put("requests/x/images/0000000-000.jpg", b"jpeg-bytes")
    assert storage.get("requests/x/images/0000000-000.jpg") == b"jpeg-bytes"
    storage.put_chunks("requests/x/output.csv", [b"a,", b"b\r\n"])
    assert storage.get("requests/x/output.csv") == b"a,b\r\n"
    assert storage.url("requests/x/images/0000000-000.jpg") == (
        f"{s3_endpoint}/{bucket}/outputs/requests/x/images/0000000-000.jpg"
    )
    signed = s3_storage(s3_endpoint, bucket, url_mode="presigned", presign_expires=600)
    url = signed.url("requests/x/images/0000000-000.jpg")
    assert url.startswith(f"{s3_endpoint}/{bucket}/outputs/requests/x/images/0000000-000.jpg?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url


def test_the_documented_policy_makes_only_output_images_public(s3_endpoint, bucket):
    storage = s3_storage(s3_endpoint, bucket)
    rid = "0123456789abcdef0123456789abcdef"
    public = [f"requests/{rid}/images/0000000-000.jpg", f"requests/{rid}/images/0000012-003.jpg"]
    private = [
        f"requests/{rid}/input.csv",
        f"requests/{rid}/manifest.parquet",
        f"requests/{rid}/output.csv",
        f"requests/{rid}/cancelled",
    ]
    for key in public + private:
        storage.put(key, b"bytes")
    # Beside the storage prefix: not ours to publish, even under the same layout.
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=bucket, Key=f"elsewhere/requests/{rid}/images/0000000-000.jpg", Body=b"bytes"
    )
    apply_documented_policy(s3_endpoint, bucket)

    for key in public:
        response = anonymous_get(storage.url(key))
        assert response.status == 200 and response.data == b"bytes", key
    for key in private:
        assert anonymous_get(storage.url(key)).status == 403, key
    outside = f"{s3_endpoint}/{bucket}/elsewhere/requests/{rid}/images/0000000-000.jpg"
    assert anonymous_get(outside).status == 403


@pytest.mark.parametrize("url_mode", ["public", "presigned"])
def test_request_on_s3_end_to_end(
    tmp_path, s3_endpoint, s3_credentials, bucket, image_server, url_mode
):
    if url_mode == "public":
        # Public output URLs need a bucket that lets anyone read output images (compose
        # sets the same policy on MinIO); presigned URLs work on a private bucket.
        apply_documented_policy(s3_endpoint, bucket)
    service = Service(
        tmp_path / "data",
        STORAGE_URL=f"s3://{bucket}/outputs",
        S3_ENDPOINT_URL=s3_endpoint,
        OUTPUT_URL_MODE=url_mode,
        **s3_credentials,
    ).start()
    try:
        a = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
        b = image_server.add("/b.png", images.png_rgba(), content_type="image/png")
        # The presigned leg also asks for WebP: S3 must serve it as WebP.
        fmt, extension, content_type = (
            ("jpeg", "jpg", "image/jpeg")
            if url_mode == "public"
            else ("webp", "webp", "image/webp")
        )
        response = service.upload(
            f'S. No.,Product Name,Input Image Urls\n1,Lamp,"{a},{b}"\n'.encode(), format=fmt
        )
        assert response.status == 202, response.data
        request_id = json.loads(response.data)["request_id"]
        final, _ = service.wait_final(request_id)
        assert final["status"] == "completed", final

        # Manifest, input, outputs and the output CSV all live in the bucket.
        keys = {
            obj["Key"]
            for obj in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
                Bucket=bucket, Prefix=f"outputs/requests/{request_id}/"
            )["Contents"]
        }
        prefix = f"outputs/requests/{request_id}"
        assert keys == {
            f"{prefix}/input.csv",
            f"{prefix}/manifest.parquet",
            f"{prefix}/output.csv",
            f"{prefix}/images/0000000-000.{extension}",
            f"{prefix}/images/0000000-001.{extension}",
        }
        # Nothing was written to local disk but the records.
        assert not (tmp_path / "data" / "objects").exists()

        # The output CSV (streamed by the API from S3) links to the bucket, and the links work.
        output = service.get(f"/api/v1/output/{request_id}.csv")
        assert output.status == 200
        row = list(csv.reader(io.StringIO(output.data.decode())))[1]
        urls = row[3].split(",")
        assert len(urls) == 2
        for url in urls:
            assert url.startswith(f"{s3_endpoint}/{bucket}/outputs/requests/{request_id}/images/")
            assert ("X-Amz-Signature=" in url) == (url_mode == "presigned")
            fetched = service.get(url)
            assert fetched.status == 200
            assert fetched.headers["Content-Type"] == content_type
            with Image.open(io.BytesIO(fetched.data)) as out:
                assert out.format == fmt.upper()
            if url_mode == "presigned":
                assert anonymous_get(url.partition("?")[0]).status == 403  # unsigned
        # The request's own files are not for whoever learns an image link: the input
        # CSV, the manifest and the output CSV (the API serves that one, to its owner).
        for name in ("input.csv", "manifest.parquet", "output.csv"):
            response = anonymous_get(f"{s3_endpoint}/{bucket}/{prefix}/{name}")
            assert response.status == 403, (name, response.status)
        # Local media route is not served for remote storage.
        media = service.get(f"/media/requests/{request_id}/images/0000000-000.jpg")
        assert media.status == 404
    finally:
        service.stop()
