"""The service examples in examples/ are valid job specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.schemas.jobs import JobSpec

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("service_*.json"))


def test_there_are_service_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"service_train_fsg.json", "service_search_fsg.json"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_service_example_validates(path: Path) -> None:
    spec = JobSpec.model_validate_json(path.read_text())
    assert spec.kind in ("train", "search")
    if spec.kind == "search":
        assert spec.search is not None and spec.search.space
