"""The dashboard's files: /ui/ serves the page without a token, Plotly comes from the installed plotly
package (never a copy in the repository), and / redirects to /ui/."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.routes import ui
from service.app import create_app
from service.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=tmp_path / "home"))) as c:
        yield c


def installed_plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def test_the_root_redirects_to_the_dashboard(client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["location"] == "/ui/"


def test_the_page_is_served_without_a_token_and_names_plotly_by_version(client: TestClient) -> None:
    response = client.get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert f'src="vendor/plotly.min.js?v={version("plotly")}"' in response.text
    assert '<script type="module" src="app.js">' in response.text
    assert "{{" not in response.text


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("app.js", "text/javascript"), ("views/job.js", "text/javascript"), ("style.css", "text/css")],
)
def test_the_pages_modules_and_styles_are_served_and_revalidated(
    client: TestClient, path: str, media_type: str
) -> None:
    response = client.get(f"/ui/{path}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (ui.WEB_DIR / path).read_bytes()
    assert response.headers["cache-control"] == "no-cache"
    again = client.get(f"/ui/{path}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_plotly_is_the_installed_packages_file_with_a_long_cache(client: TestClient) -> None:
    expected = installed_plotly_js().read_bytes()
    response = client.get("/ui/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.content == expected
    assert "max-age=31536000" in response.headers["cache-control"]
    assert "immutable" in response.headers["cache-control"]
    assert ui.plotly_js_path() == installed_plotly_js()
    assert not list(Path(ui.WEB_DIR).rglob("plotly*.js"))  # nothing copied into the repository


def test_plotly_is_gzipped_for_browsers_and_revalidates_by_version(client: TestClient) -> None:
    with client.stream("GET", "/ui/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert len(raw) < installed_plotly_js().stat().st_size / 2
    assert gzip.decompress(raw) == installed_plotly_js().read_bytes()
    etag = response.headers["etag"]
    assert client.get("/ui/vendor/plotly.min.js", headers={"If-None-Match": etag}).status_code == 304


def test_paths_outside_the_web_folder_and_missing_files_are_404(client: TestClient) -> None:
    assert client.get("/ui/nope.js").status_code == 404
    assert client.get("/ui/..%2F..%2Fsettings.py").status_code == 404
    assert client.get("/ui/%2e%2e/app.py").status_code == 404


def test_the_data_calls_still_need_a_token(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 401
