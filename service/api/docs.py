"""``/docs`` (Swagger UI) and ``/redoc`` from files installed with the package (``fastapi-offline``),
never from a CDN: the dashboard on this origin keeps a token in ``localStorage``, so no script from
elsewhere may run here. Each page's Content Security Policy allows its one inline start-up script by
its hash, and nothing else inline."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.api.edge import CSP

__all__ = ["STATIC_URL", "install"]

STATIC_URL = "/docs/static"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def page_csp(html: bytes) -> str:
    """The house policy, with the page's inline scripts allowed by hash (and Redoc's blob: workers)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    script = f"script-src 'self' {hashes}".rstrip()
    return CSP.replace("script-src 'self'", script) + "; worker-src 'self' blob:"


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers["content-security-policy"] = page_csp(bytes(response.body))
    return response


def install(app: FastAPI) -> None:
    """Mount the assets and add the pages (the app is created with ``docs_url=None, redoc_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-static")
    router = APIRouter(include_in_schema=False)
    title = app.title

    @router.get("/docs")
    def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_swagger_ui_html(
                openapi_url=f"{root}/openapi.json",
                title=f"{title} - Swagger UI",
                oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
                swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            )
        )

    @router.get("/docs/oauth2-redirect")
    def swagger_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    @router.get("/redoc")
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_redoc_html(
                openapi_url=f"{root}/openapi.json",
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.include_router(router)
