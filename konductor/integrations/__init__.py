"""Adapters for frameworks (Celery, SQLAlchemy, FastAPI), each an optional extra.

Each adapter is a module of its own that imports its framework only when it is
itself imported, so ``import konductor`` never pulls one in. Importing an
adapter without its extra raises an ImportError naming the install command,
e.g. ``pip install 'konductor[celery]'``.
"""
