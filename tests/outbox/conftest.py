"""The outbox tests use the ORM harness's MongoDB-wire server (jongodb, a single-node replica
set: transactions work) and the session's Redis."""

from tests.orm.conftest import database_name, orm

__all__ = ["database_name", "orm"]
