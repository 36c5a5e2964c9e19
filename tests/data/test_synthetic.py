import pandas as pd

from anomaly.data.synthetic import ANOMALY_KINDS, FEATURES, LABEL_COLUMN, make_sensor_table


def test_same_seed_same_table():
    pd.testing.assert_frame_equal(
        make_sensor_table(200, 0.1, seed=3), make_sensor_table(200, 0.1, seed=3)
    )


def test_columns_and_planted_share():
    table = make_sensor_table(1000, 0.1, seed=1)
    assert list(table.columns) == [
        "reading_id",
        "timestamp",
        "machine_type",
        *FEATURES,
        LABEL_COLUMN,
    ]
    planted = table[LABEL_COLUMN] != "none"
    assert planted.sum() == 100
    assert set(table.loc[planted, LABEL_COLUMN]) == set(ANOMALY_KINDS)


def test_sensors_are_correlated_through_load():
    table = make_sensor_table(2000, seed=2)
    pumps = table[table["machine_type"] == "pump"]
    assert pumps["pressure"].corr(pumps["flow_rate"]) > 0.9
