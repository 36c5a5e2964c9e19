"""Outputs of a streaming run: their schemas, the Parquet files written batch by batch, the result.

Each output goes to a hidden temporary file and is renamed into place only when every input row
has been accounted for (scored or rejected), so a reader never sees half a run.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from anomaly.data.keys import KeyIndex
from anomaly.data.parquet import output_write_error
from anomaly.data.paths import mark_output_schema
from anomaly.data.schema import SCORED_FIELDS
from anomaly.errors import DataFileError
from anomaly.quarantine import (
    QuarantinedFile,
)
from anomaly.scoring import ScoredBatch, duplicate_rows
from anomaly.stream_sources import ParquetSource

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector
    from anomaly.scoring import ImageReview

logger = logging.getLogger(__name__)


# Scores kept for the run summary (quantiles, histogram): all of them up to this many, else a
# uniform sample of this size, so a summary of a billion rows still fits in a few MB.
SCORE_SAMPLE_SIZE = 200_000


def output_schemas(
    detector: AutoencoderDetector, sources: Sequence[ParquetSource]
) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the scored and the rejects files for these inputs.

    Scored: the key columns (typed as in the first file), then the score columns. Rejects: every
    input column (the files' schemas unified; a column missing from a file is null there), then
    ``reason``, ``source_row``, ``source_file``.
    """
    # With every file quarantined there are no key types to copy: the (empty) key columns
    # are typed null.
    first = sources[0].schema if sources else None
    keys = [
        first.field(k) if first is not None else pa.field(k, pa.null())
        for k in detector.schema_.keys
    ]
    scored = pa.schema([*keys, *SCORED_FIELDS])
    # plan_sources has already set aside files whose types do not unify.
    inputs = (
        pa.unify_schemas([s.schema for s in sources], promote_options="permissive")
        if sources
        else pa.schema([])
    )
    rejects = pa.schema(
        [
            *inputs,
            pa.field("reason", pa.string()),
            pa.field("source_row", pa.int64()),
            pa.field("source_file", pa.string()),
        ]
    )
    return scored, rejects


def conform(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types (missing columns null)."""
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    try:
        return pa.Table.from_arrays(columns, names=schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataFileError(
            f"{source}: columns do not match the earlier files' types {schema} ({exc})",
            source=source,
        ) from exc


class ParquetSink:
    """One output file written batch by batch to a hidden temporary file, renamed on commit."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        role: str,
        use_dictionary: bool | list[str] = True,
    ):
        self.path = path
        self.schema = schema
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(
                self.tmp, mark_output_schema(schema, role), use_dictionary=use_dictionary
            )
        except OSError as exc:
            raise output_write_error(path, exc) from exc

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            try:
                self.writer.write_table(table)
            except OSError as exc:
                raise output_write_error(self.path, exc) from exc

    def commit(self) -> Path:
        try:
            self.writer.close()
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise output_write_error(self.path, exc) from exc
        return self.path

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


@dataclass
class ScoreSample:
    """A uniform sample of at most ``size`` scores (all of them while fewer), in constant memory.

    Each score draws a random key and the ``size`` smallest keys are kept (bottom-k sampling);
    pruning waits until twice the size has accumulated, so its cost per score is constant.
    """

    size: int
    seed: int = 0
    _keys: list[np.ndarray] = field(default_factory=list)
    _values: list[np.ndarray] = field(default_factory=list)
    _held: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def add(self, scores: np.ndarray) -> None:
        if not len(scores):
            return
        self._keys.append(self._rng.random(len(scores)))
        self._values.append(np.asarray(scores, dtype=np.float64))
        self._held += len(scores)
        if self._held > 2 * self.size:
            self._prune()

    def _prune(self) -> None:
        if not self._keys:
            return
        keys, values = np.concatenate(self._keys), np.concatenate(self._values)
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            keys, values = keys[keep], values[keep]
        self._keys, self._values, self._held = [keys], [values], len(keys)

    def values(self) -> np.ndarray:
        self._prune()
        return self._values[0] if self._values else np.array([], dtype=np.float64)


@dataclass(frozen=True)
class StreamResult:
    """What a streamed scoring run wrote: counts, a sample of the scores and the two files."""

    n_rows: int
    n_scored: int
    n_rejected: int
    n_flagged: int
    scores: np.ndarray  # all scores, or a uniform sample of SCORE_SAMPLE_SIZE of them
    output: Path
    rejects: Path
    series_counts: dict[str, int] = field(default_factory=dict)
    # Image batches only: the top-scoring images for the scoring run's review plot.
    images: ImageReview | None = None
    # Input files set aside whole, and the file listing them (written even when empty).
    quarantined: tuple[QuarantinedFile, ...] = ()
    quarantine: Path | None = None

    @property
    def anomaly_rate(self) -> float:
        return self.n_flagged / self.n_scored if self.n_scored else 0.0

    @property
    def n_quarantined_rows(self) -> int:
        """Rows in quarantined files whose row count could be read."""
        return sum(f.rows or 0 for f in self.quarantined)

    @classmethod
    def of_batch(
        cls, batch: ScoredBatch, output: Path, rejects: Path, quarantine: Path | None = None
    ) -> StreamResult:
        """The same summary for a batch scored in memory and written whole."""
        return cls(
            n_rows=batch.n_rows,
            n_scored=batch.n_scored,
            n_rejected=batch.n_rejected,
            n_flagged=batch.n_flagged,
            scores=batch.scores,
            output=output,
            rejects=rejects,
            series_counts=dict(batch.series_counts),
            images=batch.images,
            quarantined=batch.quarantined,
            quarantine=quarantine,
        )


# The names the table path used before the image path shared these classes.
_ParquetSink = ParquetSink
_ScoreSample = ScoreSample


class ScoredWriter:
    """Appends scored and rejected tables, in order, to the two output files; counts as it goes.

    Use as a context manager: leaving it with an exception removes both temporary files, and
    neither output is touched.
    """

    def __init__(
        self,
        output: Path,
        rejects: Path,
        scored_schema: pa.Schema,
        rejects_schema: pa.Schema,
        expected_rows: int,
    ):
        if rejects.resolve() == output.resolve():
            raise ValueError(
                f"rejects and output are the same file ({output}); give them different paths"
            )
        self.expected_rows = expected_rows
        # Dictionary-encode only the repetitive text columns: trying it on the float score
        # columns (always unique) doubled the writing time of the scored file.
        text = [f.name for f in scored_schema if pa.types.is_string(f.type)]
        self.scored = ParquetSink(output, scored_schema, "scored", use_dictionary=text)
        self.rejects = ParquetSink(rejects, rejects_schema, "rejects")
        self.n_scored = self.n_rejected = self.n_flagged = 0
        self.sample = ScoreSample(SCORE_SAMPLE_SIZE)
        # Duplicate keys are found here, where every file's scored rows pass in order, so a
        # single process and a Dask cluster write the same column.
        self.keys = list(scored_schema.names[: scored_schema.get_field_index("anomaly_score")])
        self.key_index: tuple[str, KeyIndex] | None = None

    def __enter__(self) -> ScoredWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.scored.abort()
            self.rejects.abort()

    def write(self, scored: pa.Table, rejected: pa.Table, source: str) -> None:
        if self.key_index is None or self.key_index[0] != source:
            self.key_index = (source, KeyIndex())
        duplicates = duplicate_rows(
            scored.select(self.keys).to_pandas(),
            scored.column("source_row").to_numpy(),
            self.key_index[1],
        )
        scored = scored.append_column(
            "duplicate_of_row", pa.array(duplicates, type=pa.int64(), from_pandas=True)
        )
        self.scored.write(conform(scored, self.scored.schema, source))
        self.rejects.write(conform(rejected, self.rejects.schema, source))
        self.n_scored += scored.num_rows
        self.n_rejected += rejected.num_rows
        self.n_flagged += int(pc.sum(scored.column("is_anomaly")).as_py() or 0)
        self.sample.add(scored.column("anomaly_score").to_numpy())

    def commit(self) -> StreamResult:
        n_rows = self.n_scored + self.n_rejected
        if n_rows != self.expected_rows:  # pragma: no cover - an invariant, not a branch
            raise AssertionError(
                f"rows in {self.expected_rows} != scored {self.n_scored} + rejected {self.n_rejected}"
            )
        # The scored output lands last: once it exists, its rejects file is complete beside it.
        rejects = self.rejects.commit()
        output = self.scored.commit()
        return StreamResult(
            n_rows=n_rows,
            n_scored=self.n_scored,
            n_rejected=self.n_rejected,
            n_flagged=self.n_flagged,
            scores=self.sample.values(),
            output=output,
            rejects=rejects,
        )
