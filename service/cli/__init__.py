"""The ``fsg`` command line. Commands import heavy modules inside their bodies, so ``fsg train``
never loads FastAPI or Ray."""

from __future__ import annotations

import typer

from service.cli import train as _train

app = typer.Typer(
    name="fsg",
    help="Train binary neural networks with learned sign gradients (FSG) and their baselines.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
_train.register(app)

__all__ = ["app"]
