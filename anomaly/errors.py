"""Named errors. Each says what it got and what it expected, so a user can act on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


class AnomalyError(Exception):
    """Base class of every error this package raises on purpose."""


if TYPE_CHECKING:
    from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

    class NotFittedError(AnomalyError, _SklearnNotFittedError):
        """A fitted-only method was called before ``fit``."""

else:

    def __getattr__(name: str) -> Any:
        # NotFittedError subclasses scikit-learn's, whose import costs about 2 s (scipy comes
        # with it): it is defined on first use, so commands that never fit or load a detector
        # (`anomaly score --help`, `log-run`) and the other errors here do not pay for it.
        if name != "NotFittedError":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

        class NotFittedError(AnomalyError, _SklearnNotFittedError):
            """A fitted-only method was called before ``fit``.

            Also an ``sklearn.exceptions.NotFittedError`` so scikit-learn tooling recognises it.
            """

        # Pickle (Prefect, Dask) finds the class again by this name, through this hook.
        NotFittedError.__qualname__ = "NotFittedError"
        globals()["NotFittedError"] = NotFittedError
        return NotFittedError


class SchemaError(AnomalyError, ValueError):
    """A table does not match the schema the model was fitted on."""

    def __init__(self, message: str, *, column: str | None = None, source: str | None = None):
        self.column = column
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message}")


class CalibrationError(AnomalyError, ValueError):
    """The calibration set cannot support the requested threshold."""


class TailTooShortError(CalibrationError):
    """A tail-fitted (POT) threshold has too few calibration scores in its tail to fit.

    ``n_excesses`` is how many there were, ``needed`` how many the fit asks for.
    """

    def __init__(self, message: str, *, n_excesses: int, needed: int):
        self.n_excesses = n_excesses
        self.needed = needed
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields survive pickling (Prefect, Dask) only through this.
        return (_tail_too_short_error, (str(self), self.n_excesses, self.needed))


def _tail_too_short_error(message: str, n_excesses: int, needed: int) -> TailTooShortError:
    return TailTooShortError(message, n_excesses=n_excesses, needed=needed)


class InvalidRowsError(AnomalyError, ValueError):
    """Rows with NaN/inf features reached a path that cannot reject them."""


class DataFileError(AnomalyError, OSError):
    """An input file is missing, unreadable or not what its name says.

    ``source`` names the file when the error concerns one file of several, so a run over many
    files can set that one aside and go on.
    """

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # OSError pickles its args only; keep ``source`` across Prefect's and Dask's pickling.
        return (_data_file_error, (str(self), self.source))


def _data_file_error(message: str, source: str | None) -> DataFileError:
    return DataFileError(message, source=source)


class OutputPathError(AnomalyError, ValueError):
    """An output path would overwrite an input, or another output of the same run."""


class OutputWriteError(AnomalyError, OSError):
    """An output could not be written (disk full, file too large, no permission), naming it."""


class ModelFileError(AnomalyError, OSError):
    """A saved model is missing files, truncated, tampered with or of an unknown format."""


class ModelNotFoundError(AnomalyError, LookupError):
    """A model URI names no registered model, version or alias."""


class TrackingStoreError(AnomalyError, OSError):
    """The tracking store named by the configuration cannot be used (a folder, a missing parent)."""


class NotLoggedError(AnomalyError):
    """A run's outputs are complete but the tracking store refused to log it; ``record`` keeps it.

    ``result`` is the run's summary, where the caller has one, so it can still be shown.
    """

    def __init__(self, message: str, *, record: str, result: object | None = None):
        self.record = record
        self.result = result
        super().__init__(message)
