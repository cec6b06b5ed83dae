"""The dashboard in headless Chromium against the real service (API + dispatcher processes + Ray).

Debian's chromium (``/usr/bin/chromium``, installed by ``make test`` when missing) is driven by
Playwright; nothing is downloaded at run time. Without chromium or playwright the module is skipped
with the reason, unless ``FSG_REQUIRE_BROWSER=1`` makes that an error. Screenshots of every page go
to ``$FSG_TEST_ARTIFACTS/screenshots`` (default ``test-artifacts/screenshots``, git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RAY_CPUS, RayHead, Service, run_service, wait_for
from tests.e2e.test_service_e2e import job_spec

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

CHROMIUM = Path(os.environ.get("FSG_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = Path(os.environ.get("FSG_TEST_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
TIMEOUT_MS = 120_000  # a job's whole run on a 2-CPU machine, Ray Train's start-up included


def _unavailable(reason: str) -> None:
    if os.environ.get("FSG_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and FSG_REQUIRE_BROWSER=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"no {CHROMIUM}: `apt-get install chromium` (make test does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def service(browser: Any, ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module: the tests share its jobs (the trained pair is reused by compare)."""
    with run_service(ray_head.address, ray_head.dashboard_url, tmp_path_factory.mktemp("web") / "fsg") as svc:
        yield svc
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, 60, "Ray's CPUs are free again")


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The Content Security Policy must not block anything the pages need (Chromium logs each refusal). An
    # image from another origin is the exception: blocking it is the policy's job (ReDoc's footer fetches
    # its logo from cdn.redoc.ly and hides it when that fails).
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if "Content Security Policy" in msg.text and not msg.text.startswith("Loading the image 'https://")
            else None
        ),
    )
    foreign: list[str] = []  # requests to other origins that went out (a CSP-blocked one fails before)
    page.on(
        "requestfinished",
        lambda req: None if req.url.startswith((service.url, "data:", "blob:")) else foreign.append(req.url),
    )
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not foreign, f"requests to other origins: {foreign}"


# The trained pair: long enough to learn visibly (their compare page is the README's screenshot).
EPOCHS, STEPS = 4, 12
TOTAL = 1 + EPOCHS  # job_spec pre-trains one epoch


@pytest.fixture(scope="module")
def trained(service: Service) -> list[str]:
    """Two small jobs (1 pre-training + EPOCHS binarized epochs of STEPS steps), submitted when first requested."""
    client = service.client()
    # ray_task: what the pages show does not depend on where the loop ran, and no worker group starts
    resources = {"num_workers": 1, "executor": "ray_task"}
    common = {"resources": resources, "epochs": EPOCHS, "max_steps_per_epoch": STEPS, "batch_size": 64}
    return [
        client.submit(job_spec(name="ui-ste", **common))["id"],
        client.submit(job_spec(name="ui-approx", estimator={"name": "approx_sign"}, **common))["id"],
    ]


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.mouse.move(0, 0)  # no hover effects (Plotly's mode bar) in the picture
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, service: Service) -> None:
    page.goto(f"{service.url}/ui/#/signin")
    page.get_by_test_id("token-input").fill(service.token)
    page.get_by_test_id("signin-button").click()
    page.get_by_test_id("jobs-card").wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=jobs-counts]').textContent !== ''")


def chart(page: Any, element_id: str) -> list[dict[str, Any]]:
    """The traces Plotly keeps on the chart's div (``div.data``)."""
    return page.evaluate(
        "id => Array.from(document.getElementById(id).data || [], t => ({name: t.name, x: t.x, y: t.y, meta: t.meta}))",
        element_id,
    )


def expected_points(rows: list[dict[str, Any]], metric: str, pretrain_epochs: int) -> tuple[list[int], list[float]]:
    """``rows`` of GET /metrics as the page plots them: pre-training epochs first, then binarized ones."""
    ordered = sorted(rows, key=lambda r: (r["phase"] != "pretrain", r["epoch"]))
    xs = [r["epoch"] if r["phase"] == "pretrain" else pretrain_epochs + r["epoch"] for r in ordered]
    return xs, [r[metric] for r in ordered]


def test_the_page_loads_and_a_wrong_token_is_refused(page: Any, service: Service) -> None:
    page.goto(f"{service.url}/")
    page.get_by_test_id("signin-form").wait_for()
    assert page.url.endswith("/ui/#/signin")
    assert page.evaluate("typeof window.Plotly.react") == "function"
    screenshot(page, "signin")

    page.get_by_test_id("token-input").fill("fsg_not-a-token")
    page.get_by_test_id("signin-button").click()
    refusal = page.get_by_test_id("signin-error")
    refusal.wait_for(state="visible")
    assert "Token refused (401)" in refusal.inner_text()
    assert page.url.endswith("#/signin") and page.get_by_test_id("signin-form").is_visible()
    assert page.evaluate("localStorage.getItem('fsg.token')") is None
    screenshot(page, "signin-refused")


@pytest.mark.parametrize(("path", "ready"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")])
def test_the_api_docs_render_from_this_origin_under_the_policy(
    page: Any, service: Service, path: str, ready: str
) -> None:
    """Swagger UI and ReDoc come from the installed package (the fixture fails on any other origin and
    on any Content Security Policy refusal), and the headers forbid framing and sniffing."""
    response = page.goto(f"{service.url}{path}")
    assert response is not None and response.ok
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    page.locator(ready).first.wait_for()
    assert "fsg" in page.locator(ready).first.inner_text()


def test_submitted_jobs_appear_and_turn_running_then_succeeded_without_a_reload(
    page: Any, service: Service, request: pytest.FixtureRequest
) -> None:
    sign_in(page, service)
    page.evaluate("window.__notReloaded = true")
    ids: list[str] = request.getfixturevalue("trained")  # submitted now, while the list is on screen
    for job_id in ids:
        page.locator(f'tr[data-job-id="{job_id}"]').wait_for()
    page.locator(f'tr[data-job-id="{ids[0]}"][data-state="running"]').wait_for(timeout=TIMEOUT_MS)
    screenshot(page, "jobs-running")
    page.locator(f'tr[data-job-id="{ids[0]}"][data-state="succeeded"]').wait_for(timeout=TIMEOUT_MS)
    page.locator(f'tr[data-job-id="{ids[1]}"][data-state="succeeded"]').wait_for(timeout=TIMEOUT_MS)
    row = page.locator(f'tr[data-job-id="{ids[0]}"]')
    wait_for(
        lambda: row.get_by_test_id("progress").inner_text() == f"{TOTAL}/{TOTAL}", 10, "the progress is complete", 0.2
    )
    assert row.get_by_test_id("state").inner_text() == "succeeded"
    assert page.evaluate("window.__notReloaded") is True
    screenshot(page, "jobs")


def test_the_job_page_plots_one_point_per_finished_epoch_and_resumes_its_stream(
    page: Any, service: Service, trained: list[str]
) -> None:
    client = service.client()
    job_id = trained[0]
    assert client.wait(job_id, poll_s=1, timeout_s=TIMEOUT_MS / 1000)["state"] == "succeeded"
    last_event_ids: list[str | None] = []
    cut_after: list[str] = []

    def end_the_first_stream_halfway(route: Any) -> None:
        # As a proxy or a restarted API might: the page has to resume after the last event it saw.
        last_event_ids.append(route.request.headers.get("last-event-id"))
        if len(last_event_ids) > 1:
            route.continue_()
            return
        messages = [m for m in route.fetch().text().split("\n\n") if m.startswith("id: ")]
        kept = messages[: len(messages) // 2]
        cut_after.append(kept[-1].split("\n")[0].removeprefix("id: "))
        route.fulfill(status=200, content_type="text/event-stream", body="".join(m + "\n\n" for m in kept))

    sign_in(page, service)
    page.route("**/v1/jobs/*/events", end_the_first_stream_halfway)
    page.locator(f'tr[data-job-id="{job_id}"] [data-testid="job-link"]').click()
    page.locator('[data-testid="job-state"][data-state="succeeded"]').wait_for()
    page.locator('[data-testid="stream-status"][data-status="ended"]').wait_for()
    assert last_event_ids == [None, cut_after[0]]

    rows = client.metrics(job_id)
    assert len(rows) == TOTAL
    for element_id, metric in (("chart-loss", "train_loss"), ("chart-acc", "val_acc")):
        traces = chart(page, element_id)
        assert traces and all(len(t["x"]) == len(rows) for t in traces), traces
        (plotted,) = [t for t in traces if t["meta"]["metric"] == metric]
        xs, ys = expected_points(rows, metric, pretrain_epochs=1)
        assert plotted["x"] == xs == list(range(1, TOTAL + 1))
        assert plotted["y"] == pytest.approx(ys)

    assert page.get_by_test_id("telemetry").is_hidden()  # STE learns nothing: no telemetry cards
    job = client.job(job_id)
    assert page.get_by_test_id("ray-dashboard-link").get_attribute("href") == job["ray_dashboard_url"]
    page.get_by_test_id("summary-file-bytes").wait_for()
    with page.expect_download() as download:
        page.get_by_test_id("download-packed").click()
    packed = max((c for c in client.checkpoints(job_id) if c["packed_bytes"]), key=lambda c: c["id"])
    assert download.value.suggested_filename.endswith(".packed.safetensors")
    assert Path(download.value.path()).stat().st_size == packed["packed_bytes"]
    with page.expect_download() as onnx_download:
        page.get_by_test_id("download-onnx").click()
    assert onnx_download.value.suggested_filename.endswith(f"-e{packed['epoch']}.onnx")
    assert Path(onnx_download.value.path()).read_bytes() == client.http.get(packed["onnx_url"]).content
    screenshot(page, "job")


def test_a_learned_estimators_telemetry_is_plotted(page: Any, service: Service) -> None:
    client = service.client()
    fsg = {"name": "fsg", "kernel": "torch", "stats_every": 1}
    spec = job_spec(name="ui-fsg", estimator=fsg, epochs=2, max_steps_per_epoch=6, batch_size=64)
    job_id = client.submit(spec | {"resources": {"num_workers": 1, "executor": "ray_task"}})["id"]
    assert client.wait(job_id, poll_s=1, timeout_s=TIMEOUT_MS / 1000)["state"] == "succeeded"
    sign_in(page, service)
    page.goto(f"{service.url}/ui/#/jobs/{job_id}")
    page.locator('[data-testid="job-state"][data-state="succeeded"]').wait_for()
    page.get_by_test_id("telemetry").wait_for()
    rows = [r for r in client.metrics(job_id) if r["phase"] == "binary"]
    assert all(r["slow_term_rms"] > 0 and -1 <= r["update_ste_cos"] <= 1 for r in rows)
    for element_id, metrics in (
        ("chart-terms", ("slow_term_rms", "fast_term_rms")),
        ("chart-cos", ("update_ste_cos",)),
    ):
        traces = {t["meta"]["metric"]: t for t in chart(page, element_id)}
        for metric in metrics:
            assert traces[metric]["y"] == pytest.approx([r[metric] for r in rows])


@pytest.mark.timeout(600)
def test_a_study_has_its_page_with_bands_and_the_table(page: Any, service: Service) -> None:
    client = service.client()
    variants = [{"name": "ste", "estimator": {"name": "ste"}}, {"name": "approx", "estimator": {"name": "approx_sign"}}]
    spec = job_spec(name="ui-study", epochs=2, max_steps_per_epoch=3, batch_size=64) | {
        "kind": "study",
        "resources": {"num_workers": 1, "executor": "ray_task"},  # trials train in their Tune trials
        "study": {"variants": variants, "seeds": 2, "max_concurrent_trials": 2},
    }
    job_id = client.submit(spec)["id"]
    assert client.wait(job_id, poll_s=1, timeout_s=300)["state"] == "succeeded"
    sign_in(page, service)
    page.goto(f"{service.url}/ui/#/jobs/{job_id}")
    page.get_by_test_id("study-link").click()
    page.locator('[data-testid="study-row"][data-variant="approx"]').wait_for()
    study = client.study(job_id)
    rows = {r.get_attribute("data-variant"): r.inner_text() for r in page.get_by_test_id("study-row").all()}
    assert set(rows) == {"ste", "approx"} and "2/2" in rows["approx"] and "baseline" in rows["ste"]
    mean = study["variants"][1]["figures"]["best_val_acc"]["mean"]
    assert f"{100 * mean:.2f}%" in rows["approx"]
    metrics = [r for r in client.metrics(job_id) if r["trial"].startswith("approx/") and r["phase"] == "binary"]
    (line,) = [t for t in chart(page, "chart-study-val") if t["meta"].get("variant") == "approx"]
    for epoch, y in zip(line["x"], line["y"], strict=True):
        values = [r["val_acc"] for r in metrics if r["epoch"] == epoch]
        assert len(values) == 2 and y == pytest.approx(sum(values) / 2)
    screenshot(page, "study")


def test_compare_overlays_the_selected_jobs(page: Any, service: Service, trained: list[str]) -> None:
    client = service.client()
    for job_id in trained:
        assert client.wait(job_id, poll_s=1, timeout_s=TIMEOUT_MS / 1000)["state"] == "succeeded"
    sign_in(page, service)
    for job_id in trained:
        page.get_by_test_id(f"select-{job_id}").check()
    page.get_by_test_id("compare-button").click()
    page.get_by_test_id("compare-row").nth(1).wait_for()

    rows = page.get_by_test_id("compare-row")
    assert rows.count() == 2
    assert [rows.nth(i).get_attribute("data-job-id") for i in range(2)] == trained
    for element_id, metric in (("chart-compare-loss", "train_loss"), ("chart-compare-val", "val_acc")):
        traces = chart(page, element_id)
        assert [t["meta"]["job"] for t in traces] == trained
        for trace, job_id in zip(traces, trained, strict=True):
            xs, ys = expected_points(client.metrics(job_id), metric, pretrain_epochs=1)
            assert trace["x"] == xs and trace["y"] == pytest.approx(ys)
    screenshot(page, "compare")


def test_cancel_from_the_job_page(page: Any, service: Service, ray_head: RayHead) -> None:
    client = service.client()
    wait_for(lambda: ray_head.resources()[0] >= RAY_CPUS, TIMEOUT_MS / 1000, "Ray's CPUs are free for the long job")
    job = client.submit(job_spec(name="ui-long", epochs=200, max_steps_per_epoch=None, resources={"num_workers": 1}))
    sign_in(page, service)
    page.goto(f"{service.url}/ui/#/jobs/{job['id']}")
    # The curve grows while the page is open: points arrive from the event stream, not a reload.
    page.wait_for_function(
        "() => (document.getElementById('chart-loss').data?.[0]?.x.length ?? 0) >= 2", timeout=TIMEOUT_MS
    )
    assert page.get_by_test_id("job-state").get_attribute("data-state") == "running"

    page.get_by_test_id("cancel-button").click()
    page.get_by_test_id("cancel-confirm").click()
    page.locator('[data-testid="job-state"][data-state="cancelled"]').wait_for(timeout=60_000)
    assert client.job(job["id"])["state"] == "cancelled"
    assert page.get_by_test_id("cancel-button").is_hidden()
    page.locator('[data-testid="stream-status"][data-status="ended"]').wait_for()
    # Every epoch finished before the cancel is on the chart, once.
    rows = client.metrics(job["id"])
    (loss,) = [t for t in chart(page, "chart-loss") if t["meta"]["metric"] == "train_loss"]
    xs, ys = expected_points(rows, "train_loss", pretrain_epochs=1)
    assert loss["x"] == xs and loss["y"] == pytest.approx(ys)
    screenshot(page, "job-cancelled")
