"""Migration scripts, one per revision (``<rev>_<slug>.py``); Alembic loads them by path."""
