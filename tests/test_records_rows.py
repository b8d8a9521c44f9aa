"""The typed row builder: every key is a column of its table, every value one its column can hold."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import numpy as np
import pytest

from mtlbench.records.rows import Row, rows
from mtlbench.records.schema import TABLES, to_arrow


def test_a_misspelt_column_fails_where_it_is_set():
    row = Row("runs", run_id="r", kind="mtl", status="ok")
    with pytest.raises(KeyError, match="no column 'best_acuracy'"):
        row["best_acuracy"] = 0.5
    with pytest.raises(KeyError, match="no column"):
        row.update(train_seconds=1.0)
    with pytest.raises(KeyError, match="no record table"):
        Row("run")


@pytest.mark.parametrize("key,value", [("epochs", 2.5), ("epochs", "2"), ("best_accuracy", "high"),
                                       ("pretrained", 1), ("best_accuracy", True), ("started_at", 3.0),
                                       ("message", 3)])
def test_a_value_of_the_wrong_type_fails(key, value):
    with pytest.raises(TypeError, match=f"runs.{key}"):
        Row("runs", {key: value})


def test_numpy_scalars_ints_for_floats_and_none_are_accepted_and_written():
    row = Row("runs", run_id="r", kind="mtl", status="ok", epochs=np.int64(3), best_accuracy=np.float32(0.5),
              best_mse=2, pretrained=np.bool_(False), message=None,
              started_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    table = to_arrow("runs", [row])
    assert table.num_rows == 1 and table.column("best_mse").to_pylist() == [2.0]


def test_every_table_builds_and_rows_survive_pickling():
    for name, schema in TABLES.items():
        row = Row(name, {schema.names[0]: "run"})
        assert row.table == name
        again = pickle.loads(pickle.dumps(row))   # worker processes send rows to the driver
        assert again == row and again.table == name
        with pytest.raises(KeyError):
            again["nope"] = 1
    assert [r.table for r in rows("epochs", [{"run_id": "a", "epoch": 1}])] == ["epochs"]


def test_the_report_ranks_every_status_the_schema_allows():
    from mtlbench.records.schema import STATUSES
    from mtlbench.report.data import STATUS_RANK, TABLE_NAMES

    assert set(STATUS_RANK) == set(STATUSES)
    assert TABLE_NAMES == tuple(TABLES) and TABLE_NAMES[0] == "runs"
