"""Property-based fuzzing of the whole REST API against its own OpenAPI schema (schemathesis).

Every operation gets schema-valid and schema-invalid requests (schemathesis' coverage and fuzzing phases)
with a real bearer token, and without one or with a wrong one, against a database that holds real jobs (a
queued one, and a finished one with metrics, a log and a checkpoint), so path ids hit rows that exist as
well as ones that do not. The checks: never a server error; every status code, content type, header and
JSON body is one the schema declares; schema-invalid input and missing or wrong tokens are rejected; every
response carries the security headers (``security_headers``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from service.app import create_app
from service.db.engine import Database
from service.settings import Settings

# Small and fixed, so `make test` stays quick and a failure reproduces: fuzzed examples per operation.
# A longer hunt: FSG_FUZZ_MAX_EXAMPLES=300 FSG_FUZZ_SEED=<any int> pytest tests/service/api/test_openapi_fuzz.py
MAX_EXAMPLES = int(os.environ.get("FSG_FUZZ_MAX_EXAMPLES", "25"))
SEED = int(os.environ.get("FSG_FUZZ_SEED", "20240604"))
# A bound on any one request: streaming is kept out (see _stop_following), so this only turns a hang into
# a failure.
REQUEST_TIMEOUT_S = 10

_BOOL = TypeAdapter(bool)


@dataclass(frozen=True)
class Seeded:
    """The real rows that path parameters are aimed at."""

    queued: str  # a job that was only submitted
    finished: str  # a succeeded job with a metric row, a log and a checkpoint (packed and full files)
    ckpt: int  # that checkpoint's id


@pytest.fixture
def app(settings: Settings, db: Database) -> FastAPI:
    # The test's own database, not one the lifespan opens: schemathesis starts the app's lifespan itself
    # and keeps it until the process exits, so that lifespan must hold nothing open.
    return create_app(settings, db=db)


@pytest.fixture
def seeded(app: FastAPI, submit: Any, worker: Any, artifacts: Any) -> Seeded:
    queued = submit(name="queued")["id"]  # through POST /v1/jobs, like a client
    finished = submit(name="finished")["id"]
    worker.start(finished)
    worker.report(finished, [{"phase": "binary", "epoch": 1, "train_loss": 1.5, "val_acc": 0.25}])
    packed, full = artifacts(finished, 1)
    ckpt = worker.checkpoint(finished, epoch=1, packed=packed, full=full)
    log = app.state.storage.log_path(finished)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 1\n")
    worker.finish(finished)
    return Seeded(queued=queued, finished=finished, ckpt=ckpt)


@pytest.fixture
def api_schema(request: pytest.FixtureRequest, app: FastAPI, auth: dict[str, str], seeded: Seeded) -> Any:
    """The app's OpenAPI schema, authenticated as ``alice``, its path ids aimed at the seeded jobs too."""
    # schemathesis 4.32 relabels the pytest item through `Node._nodeid`, which pytest 9.2 no longer has.
    request.node._nodeid = request.node.nodeid
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # Through the security scheme, not as a plain header: schemathesis then knows which token is valid
            # and also sends requests without it or with a wrong one, which must get 401 (check ignored_auth).
            "auth": {"openapi": {"HTTPBearer": {"bearer": auth["Authorization"].removeprefix("Bearer ")}}},
            "request-timeout": REQUEST_TIMEOUT_S,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            # Schema-valid is not always acceptable: paths must lie under the data roots and exist, a cursor
            # must be one the server issued. Those 4xx are by design, so this check would only report them.
            "checks": {"positive_data_acceptance": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> st.SearchStrategy:
        # Schemathesis cannot guess ids: in the fuzzing phase, a real job (and checkpoint) or the generated one.
        if "job_id" not in (path_parameters or {}):
            return st.just(path_parameters)
        if "ckpt" in path_parameters:
            ckpts = st.sampled_from([str(seeded.ckpt), "latest", path_parameters["ckpt"]])
            real = st.fixed_dictionaries({"job_id": st.just(seeded.finished), "ckpt": ckpts})
            return st.one_of(real, st.just(path_parameters))
        jobs = [{**path_parameters, "job_id": job_id} for job_id in (seeded.queued, seeded.finished)]
        return st.sampled_from([*jobs, path_parameters])

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


def security_headers(ctx: Any, response: Any, case: Any) -> bool:
    """Every response, whatever the input, carries the policy that forbids framing, sniffing and foreign scripts."""
    headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in response.headers.items()}
    for name, want in [("x-frame-options", "DENY"), ("x-content-type-options", "nosniff")]:
        if headers.get(name) != want:
            raise AssertionError(f"{name}: {headers.get(name)!r}, want {want!r}")
    if "frame-ancestors 'none'" not in headers.get("content-security-policy", ""):
        raise AssertionError(f"content-security-policy: {headers.get('content-security-policy')!r}")
    return True


def _stop_following(case: Any) -> None:
    # `follow=true` (the default of /events) streams until the job ends, and the queued job never does;
    # streaming is tested in test_api_events.py and test_api_logs.py. A follow that would stream becomes
    # false; an invalid one is kept (a 422, no stream).
    if not case.operation.path.endswith(("/events", "/logs")):
        return
    query = dict(case.query or {})
    try:
        follow = "follow" not in query or _BOOL.validate_python(query["follow"])
    except ValidationError:
        return
    if follow:
        case.query = {**query, "follow": "false"}


@pytest.mark.slow  # about 15 s on SQLite and 20 s on PostgreSQL (2 cores), most of it POST /v1/jobs' coverage
@pytest.mark.timeout(300)
@schema.parametrize()
@hypothesis.settings(deadline=None, derandomize=True, database=None)
def test_no_server_errors_and_responses_match_the_schema(case: Any, seeded: Seeded) -> None:
    if case.meta is not None and case.meta.phase.name == "coverage" and "job_id" in (case.path_parameters or {}):
        # The coverage phase (boundary and invalid values of each parameter) does not run the hooks: aim it
        # at the finished job, or every case stops at a 404 before the handler reads its parameters.
        case.path_parameters = {**case.path_parameters, "job_id": seeded.finished}
    _stop_following(case)
    case.call_and_validate(additional_checks=[security_headers])
