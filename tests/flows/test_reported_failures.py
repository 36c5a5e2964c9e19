"""A run that ends in a Failed state it chose (PartialFailure) logs no engine traceback; others still do."""

from __future__ import annotations

import logging
import pickle
from uuid import uuid4

import pytest

from flows import ENGINE_LOGGERS, ReportedFailure
from flows.landing import LandingRun, LandingRunFailed
from flows.score import ScoreRunFailed


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def engine_loggers():
    """The loggers a served run's engine reports its final exception on, as Prefect names them."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.engine import engine_logger
    from prefect.logging.loggers import flow_run_logger
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    # `python -m prefect.engine` passes this adapter to run_flow as its error logger.
    run_logger = flow_run_logger(flow_run=FlowRun(flow_id=uuid4(), name="served-run"))
    collect = Collect()
    loggers = [run_logger.logger, engine_logger]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}):
            yield run_logger, engine_logger, collect.records
    finally:
        for logger in loggers:
            logger.removeHandler(collect)


def test_the_filter_sits_on_the_loggers_prefects_engine_uses(engine_loggers):
    run_logger, engine_logger, _ = engine_loggers
    assert {run_logger.logger.name, engine_logger.name} == set(ENGINE_LOGGERS)


def test_engine_errors_for_a_reported_failure_are_dropped_and_any_other_kept(engine_loggers):
    run_logger, engine_logger, records = engine_loggers
    errors = [
        LandingRunFailed("quarantined: e.parquet: cannot read as Parquet", LandingRun("m")),
        ScoreRunFailed("1 file(s) quarantined, the rest scored", None),  # type: ignore[arg-type]
        RuntimeError("the disk is full"),
    ]
    for error in errors:
        try:
            raise error
        except Exception:
            # What run_flow and handle_engine_signals log as a served run's engine exits.
            run_logger.error("Engine execution exited with unexpected exception", exc_info=True)
            engine_logger.error("Execution exited with unexpected exception", exc_info=True)
    assert [type(r.exc_info[1]) for r in records if r.exc_info] == [RuntimeError, RuntimeError]
    # Records without an exception pass, the run's own lines among them.
    run_logger.info("Finished in state PartialFailure('quarantined: e.parquet')")
    assert records[-1].getMessage().startswith("Finished in state PartialFailure")


def test_a_reported_failure_reads_as_its_message_and_keeps_its_record():
    run = LandingRun("models:/m/1", quarantined=["e.parquet: cannot read as Parquet"])
    error = LandingRunFailed("quarantined: e.parquet: cannot read as Parquet", run)
    assert isinstance(error, ReportedFailure)
    assert str(error) == "quarantined: e.parquet: cannot read as Parquet"
    assert error.run is run
    # Prefect may persist a state's data: the record survives a pickle round trip.
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is LandingRunFailed and again.run == run and str(again) == str(error)
