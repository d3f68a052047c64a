"""Store backends behind the public :mod:`konductor.store` module."""
