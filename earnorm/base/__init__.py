"""Models: ``BaseModel`` and the lifecycle hook decorators."""

from earnorm.base._fields import Field
from earnorm.base._hooks import (
    after_create,
    after_delete,
    after_update,
    after_write,
    before_create,
    before_delete,
    before_update,
    before_write,
)
from earnorm.base._model import BaseModel
from earnorm.base._query import Query

__all__ = [
    "BaseModel",
    "Field",
    "Query",
    "after_create",
    "after_delete",
    "after_update",
    "after_write",
    "before_create",
    "before_delete",
    "before_update",
    "before_write",
]
