"""The ``fsg`` command line. Commands import heavy modules inside their bodies, so ``fsg train``
never loads FastAPI or Ray."""

from __future__ import annotations

import typer

from service.cli import compare as _compare
from service.cli import db as _db
from service.cli import export as _export
from service.cli import jobs as _jobs
from service.cli import server as _server
from service.cli import study as _study
from service.cli import tenants as _tenants
from service.cli import tokens as _tokens
from service.cli import train as _train

app = typer.Typer(
    name="fsg",
    help="Train binary neural networks with learned sign gradients (FSG) and their baselines.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
for _module in (_train, _export, _server, _jobs, _study, _compare, _tokens, _tenants, _db):
    _module.register(app)

__all__ = ["app"]
