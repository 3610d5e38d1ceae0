"""One exception tree, drawn where it is defined, and one table from it to HTTP."""

from __future__ import annotations

import ast
import errno
import re
from pathlib import Path

import pytest

import pipeline.errors
from api import errors as api_errors
from pipeline.errors import (
    AddressRefused,
    AlreadyFinished,
    Conflict,
    FetchError,
    ImageRejected,
    InputError,
    NotFinished,
    NoThumbnail,
    ObjectNotFound,
    OptionError,
    PipelineError,
    SchedulerLost,
    ShuttingDown,
    StorageError,
    backend_unavailable,
)

ROOT = Path(__file__).resolve().parents[2]
HOMES = ("pipeline.errors", "api.errors")  # where the tree's classes are defined


def every_error() -> set[type[PipelineError]]:
    found: set[type[PipelineError]] = set()
    pending: list[type[PipelineError]] = [PipelineError]
    while pending:
        cls = pending.pop()
        if cls.__module__ in HOMES:
            found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def drawn_tree() -> dict[str, str]:
    """Each class drawn in pipeline/errors.py's docstring -> its parent there."""
    parents: dict[str, str] = {}
    above: list[str] = []  # the class drawn last at each depth
    for line in (pipeline.errors.__doc__ or "").splitlines():
        match = re.match(r"^( *(?:[│ ]   )*(?:[├└]── )?)([A-Z]\w+)  ", line)
        if not match or not (match[2] == "PipelineError" or "── " in match[1]):
            continue
        depth = (len(match[1]) - 4) // 4  # the tree is indented by four spaces
        del above[depth:]
        if above:
            parents[match[2]] = above[-1]
        above.append(match[2])
    return parents


def test_the_docstring_draws_every_error_under_its_real_parent():
    drawn = drawn_tree()
    actual = {}
    for cls in every_error() - {PipelineError}:
        assert cls.__base__ is not None  # only object has no base
        actual[cls.__name__] = cls.__base__.__name__
    assert drawn == actual


def test_no_other_module_defines_an_error_of_the_tree():
    names = {cls.__name__ for cls in every_error()}
    elsewhere = []
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "api").rglob("*.py")]):
        if path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") in HOMES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id in names for base in node.bases
            ):
                elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert elsewhere == []


def test_the_errors_that_lived_elsewhere_are_in_the_tree_and_still_importable_there():
    from pipeline.connection import SchedulerLost as lost
    from pipeline.connection import ShuttingDown as stopping
    from pipeline.netguard import AddressRefused as refused
    from pipeline.options import OptionError as option

    assert (lost, stopping, refused, option) == (
        SchedulerLost,
        ShuttingDown,
        AddressRefused,
        OptionError,
    )
    assert issubclass(AddressRefused, FetchError) and issubclass(OptionError, InputError)
    assert issubclass(NoThumbnail, ImageRejected)
    assert issubclass(api_errors.ApiError, PipelineError)


def test_domain_errors_carry_no_http_status():
    for cls in every_error():
        if cls.__module__ == "pipeline.errors":
            assert "title" not in vars(cls), cls
            assert not isinstance(vars(cls).get("status"), int), cls


@pytest.mark.parametrize(
    ("error", "answer"),
    [
        (OptionError("quality", "must be 1-95"), (422, "Invalid option")),
        (
            AlreadyFinished("x", request_id="r", status="completed"),
            (409, "Request already finished"),
        ),
        (NotFinished("x", request_id="r", status="processing"), (409, "Request not finished")),
        (Conflict("x", request_id="r", status="processing"), (409, "Conflict")),
        (ObjectNotFound("gone"), (503, "Storage unavailable")),  # unless a route says 404
        (NoThumbnail("too big"), (404, "No thumbnail")),
        (api_errors.ApiKeyRequired(presented=True), (401, "Invalid API key")),
        (api_errors.InvalidParam("status", "no"), (400, "Invalid parameter")),
    ],
)
def test_one_table_answers_each_error_by_its_nearest_class(error, answer):
    assert api_errors.status_of(error) == answer


def test_errors_the_api_never_answers_for_are_not_in_the_table():
    for error in (SchedulerLost("x"), FetchError("x"), pipeline.errors.ConfigError("x")):
        with pytest.raises(LookupError):
            api_errors.status_of(error)


def test_a_missing_object_is_not_a_backend_out_of_service():
    assert not backend_unavailable(ObjectNotFound("could not read k: no such object"))
    assert backend_unavailable(StorageError("could not read k: disk gone"))
    assert backend_unavailable(OSError(errno.ENOSPC, "No space left on device"))
    assert not backend_unavailable(FileNotFoundError(errno.ENOENT, "gone"))
