"""Private parts of :mod:`konductor.integrations.sqlalchemy` (needs SQLAlchemy)."""
