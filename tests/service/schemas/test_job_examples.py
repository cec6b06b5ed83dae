"""The service examples in examples/ are valid job specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.schemas.jobs import JobSpec

ROOT = Path(__file__).resolve().parents[3] / "examples"
EXAMPLES = sorted([*ROOT.glob("service_*.json"), *ROOT.glob("study_*.json")])


def test_there_are_service_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "service_train_fsg.json",
        "service_search_fsg.json",
        "study_fsg_ablation.json",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_service_example_validates(path: Path) -> None:
    spec = JobSpec.model_validate_json(path.read_text())
    assert spec.kind in ("train", "search", "study")
    if spec.kind == "search":
        assert spec.search is not None and spec.search.space


def test_the_ablation_studies_compare_every_asked_variant_against_ste_over_five_seeds() -> None:
    for name, optimizer in (("study_fsg_ablation.json", "adam"), ("study_fsg_ablation_sgd.json", "sgd")):
        spec = JobSpec.model_validate_json((ROOT / name).read_text())
        assert spec.study is not None and spec.optimizer.name == optimizer
        assert spec.study.seeds >= 5 and spec.epochs >= 20 and spec.study.baseline_name == "ste"
        assert {v.name for v in spec.study.variants} >= {
            "ste",
            "reste",
            "metaquant_multifc",
            "fsg",
            "fsg_no_slow",
            "fsg_alpha0",
            "fsg_mix",
            "fsg_no_lre",
            "fsg_no_norm",
            "fsg_hist1",
            "fsg_hist10",
        }
