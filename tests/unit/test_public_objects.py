"""Which stored objects the public-read bucket policy exposes: output images only."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest

from pipeline.errors import ConfigError
from pipeline.keys import (
    cancel_marker_key,
    input_csv_key,
    manifest_key,
    output_csv_key,
    output_key,
)
from pipeline.storage import PUBLIC_KEY_PATTERN, public_read_policy

RID = "0123456789abcdef0123456789abcdef"


def public(key: str) -> bool:
    # fnmatch's "*" matches "/" as S3's and MinIO's do in a resource ARN; the
    # pattern uses no other wildcard.
    return fnmatchcase(key, PUBLIC_KEY_PATTERN)


def test_output_images_match_the_public_pattern():
    assert public(output_key(RID, 0, 0)) and public(output_key(RID, 199_999, 12))


@pytest.mark.parametrize(
    "key",
    [
        input_csv_key(RID),
        manifest_key(RID),
        f"{manifest_key(RID)}.partial-0f0f",  # staged under a temporary name first
        output_csv_key(RID),
        f"{output_csv_key(RID)}.partial-0f0f",
        cancel_marker_key(RID),
    ],
)
def test_a_requests_own_files_do_not(key):
    assert not public(key)


@pytest.mark.parametrize(
    ("storage_url", "resource"),
    [
        ("s3://imagepipe/outputs", "arn:aws:s3:::imagepipe/outputs/requests/*/images/*"),
        ("s3://imagepipe/a/b/", "arn:aws:s3:::imagepipe/a/b/requests/*/images/*"),
        ("s3://imagepipe", "arn:aws:s3:::imagepipe/requests/*/images/*"),
    ],
)
def test_the_policy_grants_anonymous_reads_of_output_images_only(storage_url, resource):
    policy = public_read_policy(storage_url)
    [statement] = policy["Statement"]
    assert statement == {
        "Sid": "PublicReadOutputImages",
        "Effect": "Allow",
        "Principal": {"AWS": ["*"]},
        "Action": ["s3:GetObject"],  # no ListBucket: one link reveals no other object
        "Resource": [resource],
    }


@pytest.mark.parametrize("storage_url", ["file:///srv/objects", "gs://bucket/x", "s3://"])
def test_a_policy_needs_s3_storage(storage_url):
    with pytest.raises(ConfigError, match="bucket policy"):
        public_read_policy(storage_url)
