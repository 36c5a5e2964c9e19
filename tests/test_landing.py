import json
from pathlib import Path

from anomaly.landing import LEDGER_NAME, LandingFile, Ledger


def landing_file(name: str) -> LandingFile:
    return LandingFile(Path(name), name, 10, 1, name * 8)


def test_two_runs_recording_at_once_keep_each_others_entries(tmp_path):
    # Both runs read the ledger before either records: the second write must not drop the first.
    first, second = Ledger(tmp_path), Ledger(tmp_path)
    first.record(landing_file("a.parquet"), {"rows_in": 1})
    second.record(landing_file("b.parquet"), {"rows_in": 2})
    names = [e["name"] for e in json.loads((tmp_path / LEDGER_NAME).read_text())["files"]]
    assert sorted(names) == ["a.parquet", "b.parquet"]
    assert Ledger(tmp_path).is_done(landing_file("a.parquet"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
