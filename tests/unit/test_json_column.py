"""PydanticJSON: a typed value in, its JSON stored; the JSON read back as the type."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import JSONB, psycopg

from app.core.json_column import PydanticJSON
from app.core.line_offsets import LineOffsets
from app.data.json_values import JobDefaults, RunInput, UploadCheck

DIALECT = psycopg.dialect()  # the application's driver


def test_a_value_is_stored_as_its_json_and_read_back_as_its_type() -> None:
    column = PydanticJSON(RunInput)
    run = RunInput(key="batches/b/run_input.jsonl", order_key="batches/b/order", line_offsets=LineOffsets.of(4, [0, 9]))
    stored = column.process_bind_param(run, DIALECT)
    assert stored == {
        "key": "batches/b/run_input.jsonl",
        "order_key": "batches/b/order",
        "line_offsets": {"every": 4, "offsets": [0, 9]},
    }
    assert column.process_result_value(json.loads(json.dumps(stored)), DIALECT) == run


def test_defaults_and_unset_fields_are_left_out_where_the_column_asks() -> None:
    defaults = PydanticJSON(JobDefaults, exclude_defaults=True)
    assert defaults.process_bind_param(JobDefaults(max_tokens=16, batching="overlapped"), DIALECT) == {"max_tokens": 16}
    assert defaults.process_bind_param(JobDefaults(max_tokens=16, pack_window=4), DIALECT) == {
        "max_tokens": 16,
        "pack_window": 4,
    }
    check = PydanticJSON(UploadCheck, exclude_unset=True)
    assert check.process_bind_param(UploadCheck(), DIALECT) == {}
    assert check.process_result_value({}, DIALECT) == UploadCheck()


def test_a_dict_is_read_as_the_type_before_it_is_stored() -> None:
    column = PydanticJSON(JobDefaults, exclude_defaults=True)
    assert column.process_bind_param({"max_tokens": 8, "truncate_prompts": False}, DIALECT) == {"max_tokens": 8}
    with pytest.raises(ValidationError):
        column.process_bind_param({"batching": "sometimes"}, DIALECT)


def test_none_is_sql_null_not_json_null() -> None:
    plain = JSONB().dialect_impl(DIALECT).bind_processor(DIALECT)
    assert plain is not None and plain(None) is not None  # a bare JSONB column writes JSON null
    bind = PydanticJSON(JobDefaults).dialect_impl(DIALECT).bind_processor(DIALECT)
    assert bind is not None and bind(None) is None and bind(JobDefaults(max_tokens=2)) is not None
    assert PydanticJSON(JobDefaults).process_result_value(None, DIALECT) is None
