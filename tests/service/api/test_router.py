"""service/api/router.py: what every route shares."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_every_v1_operation_documents_and_answers_401(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    operations = [(method, path) for path, item in paths.items() if path.startswith("/v1/") for method in item]
    assert len(operations) >= 12
    for method, path in operations:
        assert "401" in paths[path][method]["responses"], (method, path)  # was missing on 10 of them
        concrete = path.replace("{job_id}", "abc").replace("{ckpt}", "1")
        response = client.request(method.upper(), concrete)  # no token
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
