"""Alembic migrations of the service's database, shipped inside the package so that an installed
wheel can upgrade a database. Apply them with ``nas-service db upgrade``
(:func:`nas_service.db.migrate.upgrade`); see ``migrations/README.md`` at the top of the
repository for writing a new revision."""
