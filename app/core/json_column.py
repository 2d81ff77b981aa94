"""A JSONB column that holds a typed value (a pydantic model, or any type pydantic reads):
it is written as that type's JSON and read back as that type, so code past the table
never sees the stored dict. A Python None is SQL NULL (never JSON null)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import TypeAdapter
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")


class PydanticJSON(TypeDecorator[T]):
    """`value_type` stored as JSONB. What is written is `value_type`'s JSON, less the fields
    left at their defaults (`exclude_defaults`) or never given (`exclude_unset`), so a model
    keeps the stored shape it had as a dict. A dict written (a bulk insert's row, say) is
    read as `value_type` first: a shape the type refuses never reaches the table."""

    impl = JSONB
    cache_ok = True

    def __init__(self, value_type: type[T], *, exclude_defaults: bool = False, exclude_unset: bool = False) -> None:
        super().__init__(none_as_null=True)
        self.value_type = value_type
        self.exclude_defaults = exclude_defaults
        self.exclude_unset = exclude_unset
        self._adapter: TypeAdapter[T] = TypeAdapter(value_type)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        typed = value if isinstance(value, self.value_type) else self._adapter.validate_python(value)
        return self._adapter.dump_python(
            typed, mode="json", exclude_defaults=self.exclude_defaults, exclude_unset=self.exclude_unset
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> T | None:
        return None if value is None else self._adapter.validate_python(value)
