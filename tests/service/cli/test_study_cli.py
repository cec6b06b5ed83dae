"""``fsg study``: submits a study spec, and prints a study's table (means, intervals, paired tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scipy import stats as sps
from typer.testing import CliRunner

from service.cli import app as cli
from service.client import Client

runner = CliRunner()
VARIANTS = [{"name": "ste", "estimator": {"name": "ste"}}, {"name": "ede", "estimator": {"name": "ede"}}]


def test_fsg_study_submits_a_spec_as_a_study(api: Client, client: Any, tiny_spec: Any, tmp_path: Path) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(tiny_spec(study={"variants": VARIANTS, "seeds": 2})))  # kind is set by the command
    result = runner.invoke(cli, ["study", str(path)])
    assert result.exit_code == 0, result.output
    assert "submitted study" in result.output and "ste" in result.output and "(baseline)" in result.output
    (job,) = api.jobs(limit=20)["items"]
    assert job["kind"] == "study" and job["spec"]["study"]["seeds"] == 2


def test_fsg_study_and_fsg_report_print_the_table_of_a_study(
    api: Client, submit: Any, worker: Any, tmp_path: Path
) -> None:
    job = submit(kind="study", study={"variants": VARIANTS, "seeds": 3})
    worker.start(job["id"])
    best = {"ste": [0.90, 0.92, 0.91], "ede": [0.95, 0.93, 0.96]}
    for variant, values in best.items():
        for seed, value in enumerate(values):
            key = f"{variant}/seed{seed}"
            rows = [{"phase": "binary", "epoch": 1, "val_acc": value, "test_acc": value, "train_loss": 0.2}]
            worker.report(job["id"], rows, trial_key=key)
            worker.trial(job["id"], key, {"variant": variant, "seed": seed}, "succeeded", value)
    result = runner.invoke(cli, ["study", job["id"]])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if "│ ede" in line]
    assert "0.9467" in line and "+0.0367" in line and "3/0" in line
    p_value = f"{sps.ttest_rel(best['ede'], best['ste']).pvalue:.3g}"
    assert p_value in line
    assert "baseline ste" in result.output

    page = tmp_path / "report.html"
    report = runner.invoke(cli, ["report", job["id"], "--out", str(page)])
    assert report.exit_code == 0, report.output
    text = page.read_text()
    assert "<h2>Study</h2>" in text and "baseline ste" in text and p_value in text
    assert text.count("<td>ede/seed") == 3 and "+0.0367" in text
