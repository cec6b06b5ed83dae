"""``/ui``: the web dashboard (static files of ``service/web``) and Plotly's JavaScript, taken from the
installed ``plotly`` package rather than copied into the repository. No token is needed here: the page
asks for one and sends it with its own ``/v1`` calls."""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

router = APIRouter(tags=["ui"], include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
PLOTLY_JS = Path("package_data") / "plotly.min.js"
# The page's own files are revalidated on every load (ETag, usually a 304), so an upgrade shows at once;
# Plotly's file is named by version in index.html, so browsers may keep it for a year.
NO_CACHE = "no-cache"
LONG_CACHE = "public, max-age=31536000, immutable"

_static = StaticFiles(directory=WEB_DIR, html=True, check_dir=False)


def plotly_js_path() -> Path:
    """``plotly.min.js`` of the installed ``plotly`` package (found without importing it).

    Raises:
        HTTPException: 404 when ``plotly`` is not installed.
    """
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise HTTPException(404, "plotly is not installed: `pip install plotly` (a dependency of fsg)")
    return Path(spec.origin).parent / PLOTLY_JS


def plotly_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plotly")
    except PackageNotFoundError:
        return "missing"


@lru_cache(maxsize=2)
def _plotly_bytes(path: Path, compressed: bool) -> bytes:
    # ~4.8 MB, ~1.4 MB gzipped: compressed once per process, then served from memory.
    data = path.read_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if compressed else data


@router.get("/")
def root() -> RedirectResponse:
    """The dashboard is the API's home page."""
    return RedirectResponse("/ui/")


@router.get("/ui")
def ui_without_slash() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/vendor/plotly.min.js")
def plotly_js(request: Request) -> Response:
    """Plotly's browser bundle from the installed package; gzipped when the client accepts it."""
    path = plotly_js_path()
    if not path.is_file():
        raise HTTPException(404, f"the plotly package has no {PLOTLY_JS}: reinstall plotly")
    compressed = "gzip" in request.headers.get("accept-encoding", "")
    headers = {"Cache-Control": LONG_CACHE, "Vary": "Accept-Encoding", "ETag": f'"plotly-{plotly_version()}"'}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return Response(_plotly_bytes(path, compressed), media_type="text/javascript", headers=headers)


@router.get("/ui/")
@router.get("/ui/index.html")
def index() -> HTMLResponse:
    """The single page; Plotly's URL carries its version, so a long cache never serves a stale copy."""
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html.replace("{{plotly_version}}", plotly_version()), headers={"Cache-Control": NO_CACHE})


@router.get("/ui/{path:path}")
async def asset(path: str, request: Request) -> Response:
    """Any other file under ``service/web`` (scripts, styles); 404 outside it."""
    response = await _static.get_response(path, request.scope)
    response.headers["Cache-Control"] = NO_CACHE
    return response
