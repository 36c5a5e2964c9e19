"""Image inputs scored a chunk at a time: the same files as the in-memory path, in bounded chunks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from anomaly import AutoencoderDetector
from anomaly.data.synthetic import make_blob_images
from anomaly.file_scoring import score_files, score_files_to, write_outputs
from anomaly.heatmaps import heatmap_vmax
from anomaly.plots import HeatmapFigure
from anomaly.stream_images import chunk_size, score_image_files
from anomaly.tracking import LoadedModel
from anomaly.tracking.scoring_run import log_scoring_run

SIZE = (16, 16)
FAST = {
    "model": "conv",
    "conv_channels": (8, 16),
    "latent_dim": 8,
    "epochs": 8,
    "batch_size": 32,
    "learning_rate": 5e-3,
    "verbose": False,
    "device": "cpu",
    "key_columns": ["item"],
    "image_column": "img",
}


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def detector() -> AutoencoderDetector:
    return AutoencoderDetector(**FAST).fit(make_blob_images(150, SIZE, seed=1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """50 good images over two sub-folders (one file name in both), a defect every fifth, two
    files that cannot be decoded."""
    root = tmp_path_factory.mktemp("incoming")
    normal = make_blob_images(50, SIZE, seed=2)
    defects = make_blob_images(10, SIZE, seed=3, defect=True)
    for i in range(50):
        image = defects[i // 5] if i % 5 == 0 else normal[i]
        sub = root / ("a" if i < 25 else "b")
        sub.mkdir(exist_ok=True)
        name = "same" if i in (0, 25) else f"img{i:03d}"
        (sub / f"{name}.png").write_bytes(png(image))
    whole = png(normal[0])
    (root / "a" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "b" / "empty.png").write_bytes(b"")
    return root


def _model(detector: AutoencoderDetector) -> LoadedModel:
    return LoadedModel(detector, "img", "3", "models:/img/3")


def _normalized(schema: pa.Schema) -> pa.Schema:
    """Types up to string width, without footer metadata."""
    fields = [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema]
    return pa.schema(fields)


def _same_files(streamed: Path, in_memory: Path) -> None:
    got, want = pq.read_table(streamed), pq.read_table(in_memory)
    assert _normalized(got.schema).equals(_normalized(want.schema)), (got.schema, want.schema)
    got_frame, want_frame = got.to_pandas(), want.to_pandas()
    assert len(got_frame) == len(want_frame)
    for name in want.column_names:
        if name in ("anomaly_score", "p_value"):
            np.testing.assert_allclose(got_frame[name], want_frame[name], rtol=1e-6)
        elif name == "heatmap":  # written in two folders: the same names
            names = [None if pd.isna(p) else Path(p).name for p in got_frame[name]]
            assert names == [None if pd.isna(p) else Path(p).name for p in want_frame[name]]
        else:
            assert got_frame[name].tolist() == want_frame[name].tolist(), name


def test_folder_streamed_in_chunks_writes_what_the_in_memory_path_writes(
    detector, folder, tmp_path
):
    batch = score_files(_model(detector), str(folder))
    memory = tmp_path / "memory" / "scores.parquet"
    write_outputs(batch, memory, heatmaps=True)
    out = tmp_path / "stream" / "scores.parquet"
    rejects = out.with_name("scores.rejects.parquet")
    # 16 a chunk: 52 files make four chunks, one flagged defect in most of them.
    result = score_image_files(
        detector, folder, out, rejects, "img", "3", heatmaps=tmp_path / "maps", chunk_images=16
    )
    assert result.n_rows == 52 == result.n_scored + result.n_rejected
    assert result.n_rejected == 2 and result.n_flagged == batch.n_flagged >= 8
    _same_files(out, memory)
    _same_files(rejects, memory.with_name("scores.rejects.parquet"))
    # Written a chunk at a time: one row group per chunk, none larger than a chunk.
    groups = pq.ParquetFile(out).metadata
    sizes = [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert len(sizes) == 4 and max(sizes) <= 16
    reasons = pd.read_parquet(rejects).set_index("path")["reason"]
    assert reasons[str(folder / "a" / "truncated.png")].startswith("corrupt or truncated")
    assert reasons[str(folder / "b" / "empty.png")] == "empty image (0 bytes)"
    np.testing.assert_allclose(np.sort(result.scores), np.sort(batch.scores), rtol=1e-6)


def test_the_running_top_images_are_those_of_the_whole_input(detector, folder, tmp_path):
    want = score_files(_model(detector), str(folder)).images
    out = tmp_path / "scores.parquet"
    got = score_image_files(
        detector, folder, out, tmp_path / "rejects.parquet", chunk_images=7
    ).images
    assert got is not None and want is not None
    assert got.top_rows.tolist() == want.top_rows.tolist() and len(got.top_rows) == 8
    np.testing.assert_allclose(got.top_scores, want.top_scores, rtol=1e-6)
    np.testing.assert_array_equal(got.top_images, want.top_images)
    np.testing.assert_allclose(got.top_reconstructions, want.top_reconstructions, atol=1e-6)
    np.testing.assert_allclose(got.top_error_maps, want.top_error_maps, atol=1e-6)
    # The rows point at the highest scores of the file written.
    scores = pd.read_parquet(out)["anomaly_score"].to_numpy()
    np.testing.assert_allclose(scores[got.top_rows], np.sort(scores)[::-1][:8], rtol=1e-12)


def test_heat_maps_one_per_flagged_image_named_by_key_on_one_scale(detector, folder, tmp_path):
    maps = tmp_path / "maps"
    out = tmp_path / "scores.parquet"
    score_image_files(detector, folder, out, tmp_path / "r.parquet", heatmaps=maps, chunk_images=16)
    scored = pd.read_parquet(out)
    flagged = scored[scored["is_anomaly"]]
    assert scored.loc[~scored["is_anomaly"], "heatmap"].isna().all()
    written = sorted(p.name for p in maps.glob("*.png"))
    assert sorted(Path(p).name for p in flagged["heatmap"]) == written
    assert len(written) == len(flagged) >= 8
    # Named by file stem; a/same.png and b/same.png (both defects) do not overwrite each other.
    stems = {Path(p).stem: Path(p).stem for p in flagged["path"]}
    assert {"same", "same-2"} <= {Path(p).stem for p in flagged["heatmap"]}
    assert set(stems) - {"same"} <= {Path(p).stem for p in flagged["heatmap"]}
    bars = []
    for path in flagged["heatmap"]:
        with Image.open(path) as heat:
            assert heat.mode == "RGB" and min(heat.size) >= 224  # enlarged from 16x16
            pixels = np.asarray(heat)
        width = pixels.shape[1]
        bar = pixels[:, int(0.78 * width) :]  # the colour bar, its ticks and labels
        # The bar shows the colour map: many colours from dark to bright down one column.
        column = pixels[int(0.15 * len(pixels)) : int(0.85 * len(pixels)), int(0.825 * width)]
        assert len({tuple(c) for c in column}) > 50
        bars.append(bar)
    # One scale for all maps, whichever chunk drew them, fixed by the model's threshold: every
    # bar is the same pixels as the bar of that scale.
    reference = HeatmapFigure(heatmap_vmax(detector.threshold_)).render(
        np.zeros((1, *SIZE)), np.zeros(SIZE), "any"
    )
    reference_bar = reference[:, int(0.78 * reference.shape[1]) :]
    assert all(np.array_equal(reference_bar, bar) for bar in bars)
    assert not np.array_equal(
        reference_bar,
        HeatmapFigure(1.0).render(np.zeros((1, *SIZE)), np.zeros(SIZE), "any")[
            :, int(0.78 * reference.shape[1]) :
        ],
    )
    # The images themselves differ.
    with Image.open(flagged["heatmap"].iloc[0]) as a, Image.open(flagged["heatmap"].iloc[1]) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def _parquet_inputs(root: Path) -> None:
    normal = make_blob_images(30, SIZE, seed=5)
    defects = make_blob_images(4, SIZE, seed=6, defect=True)
    blobs: list[bytes | None] = [png(i) for i in normal]
    blobs[3], blobs[11] = b"\x89PNG broken", None
    blobs[5], blobs[20] = png(defects[0]), png(defects[1])
    first = pa.table(
        {"item": pa.array(range(20), pa.int64()), "img": pa.array(blobs[:20], pa.binary())}
    )
    pq.write_table(first, root / "part-0.parquet", row_group_size=8)
    second = pa.table({"item": range(100, 110), "img": pa.array(blobs[20:], pa.binary())})
    pq.write_table(second, root / "part-1.parquet")
    pq.write_table(pa.table({"item": [1, 2]}), root / "part-2.parquet")  # no image column
    (root / "part-3.parquet").write_bytes(b"not parquet at all")


def test_parquet_streamed_in_chunks_with_quarantine_adds_up(detector, tmp_path):
    root = tmp_path / "incoming"
    root.mkdir()
    _parquet_inputs(root)
    model = _model(detector)
    batch = score_files(model, str(root))
    memory = tmp_path / "memory" / "scores.parquet"
    write_outputs(batch, memory, heatmaps=True)
    out = tmp_path / "stream" / "scores.parquet"
    rejects = out.with_name("scores.rejects.parquet")
    result = score_image_files(
        detector, root, out, rejects, "img", "3", heatmaps=tmp_path / "maps", chunk_images=6
    )
    _same_files(out, memory)
    _same_files(rejects, memory.with_name("scores.rejects.parquet"))
    assert result.n_rows == 30 and result.n_rejected == 2
    assert [q.source_file for q in result.quarantined] == [
        str(root / "part-2.parquet"),
        str(root / "part-3.parquet"),
    ]
    assert result.n_rows + result.n_quarantined_rows == 32  # part-3's rows cannot be known
    quarantine = pd.read_parquet(result.quarantine)
    assert quarantine["reason"].iloc[0].startswith("missing column 'img'")
    rejected = pd.read_parquet(rejects)
    assert rejected["item"].tolist() == [3, 11]
    assert rejected["reason"].tolist() == [
        "not a recognised image (expected PNG or JPEG)",
        "missing image (null)",
    ]
    scored = pd.read_parquet(out)
    # Rows keep their place in their file across chunks; heat maps are named by the key.
    assert scored["source_row"].tolist() == [
        *(i for i in range(20) if i not in (3, 11)),
        *range(10),
    ]
    flagged = scored[scored["is_anomaly"]]
    assert {5, 100} <= set(flagged["item"])
    assert sorted(Path(p).stem for p in flagged["heatmap"]) == sorted(map(str, flagged["item"]))


def test_a_file_that_breaks_part_way_is_quarantined_and_the_rest_scored(detector, tmp_path):
    root = tmp_path / "incoming"
    root.mkdir()
    images = make_blob_images(24, SIZE, seed=7)
    table = pa.table({"item": range(24), "img": pa.array([png(i) for i in images], pa.binary())})
    pq.write_table(table, root / "a.parquet", row_group_size=8)
    pq.write_table(table, root / "b.parquet", row_group_size=8)
    # Corrupt the middle of a's data pages: its footer still reads, its second row group not.
    raw = bytearray((root / "a.parquet").read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 200] = bytes(200)
    (root / "a.parquet").write_bytes(bytes(raw))
    out = tmp_path / "scores.parquet"
    result = score_image_files(detector, root, out, tmp_path / "r.parquet", chunk_images=4)
    assert [q.source_file for q in result.quarantined] == [str(root / "a.parquet")]
    assert result.n_rows == result.n_scored + result.n_rejected == 24
    assert set(pd.read_parquet(out)["source_file"]) == {str(root / "b.parquet")}


def test_chunks_shrink_for_large_images():
    assert chunk_size((1, 28, 28)) == 1024
    assert chunk_size((3, 224, 224)) == 445
    assert chunk_size((3, 10_000, 10_000), 1024) == 1


def test_score_files_to_streams_images_and_the_run_logs_its_review(
    detector, folder, tmp_path, tracking_config
):
    model = _model(detector)
    out = tmp_path / "out" / "scores.parquet"
    result = score_files_to(model, str(folder), out, heatmaps=True)
    assert result.images is not None and len(result.images.top_rows) == 8
    assert len(list((tmp_path / "out" / "scores.heatmaps").glob("*.png"))) == result.n_flagged
    run_id = log_scoring_run(result, model, str(folder), str(out), None, tracking_config)
    client = MlflowClient(tracking_config.tracking_uri)
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/top_scoring_images.png", "plots/batch_score_histogram.png"} <= plots
    metrics = client.get_run(run_id).data.metrics
    assert metrics["rows_scored"] == 50 and metrics["rows_rejected"] == 2
