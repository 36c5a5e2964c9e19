"""Contract tests for AutoencoderDetector (scikit-learn conventions) and a quality floor."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from anomaly import AutoencoderDetector, InvalidRowsError, NotFittedError, SchemaError
from anomaly.data.synthetic import LABEL_COLUMN
from tests.conftest import FAST, KEYS


def test_fit_returns_self_and_sets_fitted_attributes(normal_table):
    det = AutoencoderDetector(
        categorical_columns=["machine_type"], key_columns=KEYS, epochs=2, verbose=False
    )
    assert det.fit(normal_table) is det
    assert det.n_features_in_ == 9
    assert det.feature_names_in_[-1] == "machine_type"
    assert det.threshold_ == det.thresholder_.threshold_ > 0
    assert det.fit_info_["n_fit"] + det.fit_info_["n_validation"] + det.fit_info_[
        "n_calibration"
    ] == len(normal_table)


def test_init_only_stores_parameters():
    det = AutoencoderDetector(hidden_layers=(8, 4), epochs=3)
    assert det.get_params()["hidden_layers"] == (8, 4)
    assert not hasattr(det, "module_")
    assert clone(det).get_params() == det.get_params()


@pytest.mark.parametrize(
    "method", ["score_samples", "predict", "p_values", "feature_errors", "latent"]
)
def test_methods_before_fit_raise_not_fitted(method, normal_table):
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(AutoencoderDetector(), method)(normal_table)


def test_calibration_rows_are_never_trained_on(normal_table):
    det = AutoencoderDetector(epochs=1, verbose=False).fit(
        normal_table, validation_fraction=0.15, calibration_fraction=0.25
    )
    split = det.split_index_
    assert len(split["calibration"]) == round(0.25 * len(normal_table))
    assert len(split["validation"]) == round(0.15 * len(normal_table))
    assert not set(split["calibration"]) & (set(split["fit"]) | set(split["validation"]))


def test_output_shapes_and_types(fitted_detector, incoming_table):
    n = len(incoming_table)
    scores = fitted_detector.score_samples(incoming_table)
    assert scores.shape == (n,) and scores.dtype == np.float64
    assert fitted_detector.predict(incoming_table).dtype == bool
    p = fitted_detector.p_values(incoming_table)
    assert ((p > 0) & (p <= 1)).all()
    errors = fitted_detector.feature_errors(incoming_table)
    assert errors.shape == (n, 9) and list(errors.columns)[-1] == "machine_type"
    np.testing.assert_allclose(
        errors.sum(axis=1) / fitted_detector.preprocessor_.n_outputs, scores, rtol=1e-5
    )
    assert fitted_detector.latent(incoming_table).shape[0] == n


def test_predict_is_score_above_threshold(fitted_detector, incoming_table):
    scores = fitted_detector.score_samples(incoming_table)
    np.testing.assert_array_equal(
        fitted_detector.predict(incoming_table), scores > fitted_detector.threshold_
    )


def test_quality_floor_on_planted_anomalies(fitted_detector, incoming_table):
    truth = incoming_table[LABEL_COLUMN] != "none"
    scores = fitted_detector.score_samples(incoming_table)
    assert roc_auc_score(truth, scores) >= 0.95
    false_positive_rate = fitted_detector.predict(incoming_table)[~truth.to_numpy()].mean()
    assert 0.01 <= false_positive_rate <= 0.10


def test_save_load_gives_identical_scores(tmp_path, fitted_detector, incoming_table):
    fitted_detector.save(tmp_path / "model")
    loaded = AutoencoderDetector.load(tmp_path / "model")
    np.testing.assert_array_equal(
        loaded.score_samples(incoming_table), fitted_detector.score_samples(incoming_table)
    )
    assert loaded.threshold_ == fitted_detector.threshold_
    assert loaded.get_params() == fitted_detector.get_params()


def test_numpy_input(rng):
    X = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    det = AutoencoderDetector(epochs=5, verbose=False).fit(X)
    assert det.feature_names_in_.tolist() == ["x0", "x1", "x2", "x3", "x4"]
    assert det.score_samples(X[:10]).shape == (10,)
    with pytest.raises(SchemaError, match=r"shape \(n_samples, 5\).*found shape \(10, 4\)"):
        det.score_samples(X[:10, :4])


def test_scoring_with_a_missing_column_names_it(fitted_detector, incoming_table):
    with pytest.raises(SchemaError, match="missing column 'rpm'"):
        fitted_detector.score_samples(incoming_table.drop(columns="rpm"))


def test_nan_rows_in_score_samples_raise_with_row_and_column(fitted_detector, incoming_table):
    holed = incoming_table.copy()
    holed.loc[5, "humidity"] = np.nan
    with pytest.raises(InvalidRowsError, match="row 5: missing or non-finite value in humidity"):
        fitted_detector.score_samples(holed)


def test_fit_sets_aside_nan_rows_under_reject_policy(normal_table):
    holed = normal_table.copy()
    holed.loc[:9, "pressure"] = np.nan
    det = AutoencoderDetector(categorical_columns=["machine_type"], epochs=1, verbose=False).fit(
        holed
    )
    assert det.fit_info_["n_rejected"] == 10
    imputed = AutoencoderDetector(
        categorical_columns=["machine_type"], nan_policy="impute", epochs=1, verbose=False
    ).fit(holed)
    assert imputed.fit_info_["n_rejected"] == 0
    assert np.isfinite(imputed.score_samples(holed)).all()


VARIANTS = {
    "variational": {"variational": True, "kl_weight": 0.1},
    "sparse": {"sparsity_weight": 0.1, "sparsity_target": 0.05},
    "denoising-gaussian": {"noise": "gaussian", "noise_factor": 0.1},
    "denoising-masking": {"noise": "masking", "noise_factor": 0.1},
    "denoising-salt-pepper": {"noise": "salt_pepper", "noise_factor": 0.05},
    "denoising-dropout": {"noise": "dropout", "noise_factor": 0.1},
    "mae": {"loss": "mae"},
    "bce-minmax": {"loss": "bce", "scaler": "minmax"},
    "max-reduction": {"reduction": "max"},
    "batchnorm": {"batch_norm": True, "dropout": 0.1},
    "ensemble": {"n_estimators": 3},
    "ensemble-variational-sparse": {
        "n_estimators": 2,
        "variational": True,
        "kl_weight": 0.1,
        "sparsity_weight": 0.1,
    },
}


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_variant_detects_planted_anomalies(options, normal_table, incoming_table, tmp_path):
    det = AutoencoderDetector(
        categorical_columns=["machine_type"], key_columns=KEYS, **{**FAST, "epochs": 25}, **options
    ).fit(normal_table)
    scores = det.score_samples(incoming_table)
    assert np.isfinite(scores).all()
    assert roc_auc_score(incoming_table[LABEL_COLUMN] != "none", scores) > 0.85
    det.save(tmp_path / "m")
    np.testing.assert_array_equal(
        AutoencoderDetector.load(tmp_path / "m").score_samples(incoming_table), scores
    )


@pytest.mark.parametrize(
    "options,message",
    [
        ({"model": "transformer"}, "model must be one of"),
        ({"loss": "bce"}, "scaler='minmax'"),
        ({"nan_policy": "drop"}, "nan_policy must be one of"),
        ({"noise": "pink"}, "noise must be one of"),
    ],
)
def test_bad_hyperparameters_are_refused_at_fit(options, message, normal_table):
    with pytest.raises(ValueError, match=message):
        AutoencoderDetector(**options).fit(normal_table)


def test_too_small_calibration_set_is_refused(normal_table):
    from anomaly import CalibrationError

    with pytest.raises(CalibrationError, match="needs at least 19 calibration samples, got 10"):
        AutoencoderDetector(epochs=1, verbose=False).fit(
            normal_table.head(50), calibration_fraction=0.2
        )


def test_bad_split_fractions_are_refused(normal_table):
    with pytest.raises(ValueError, match="calibration_fraction"):
        AutoencoderDetector().fit(normal_table, validation_fraction=0.5, calibration_fraction=0.5)


def test_id_like_feature_column_gets_a_warning(normal_table, caplog):
    AutoencoderDetector(epochs=1, verbose=False).fit(normal_table)
    assert "column 'reading_id' looks like an id" in caplog.text


def test_a_key_cannot_also_be_a_feature(normal_table):
    with pytest.raises(SchemaError, match=r"\['reading_id'\] are both keys and features"):
        AutoencoderDetector(feature_columns=["reading_id", "rpm"], key_columns=KEYS).fit(
            normal_table
        )


def test_calibration_size_is_checked_before_training(normal_table):
    from anomaly import CalibrationError

    det = AutoencoderDetector(epochs=10_000, verbose=False)
    with pytest.raises(CalibrationError, match="needs at least 99 calibration samples"):
        det.fit(normal_table.head(200), quantile=0.99)
    assert not hasattr(det, "history_")


def test_dataframe_with_only_keys_has_no_features():
    frame = pd.DataFrame({"id": [1, 2, 3]})
    with pytest.raises(SchemaError, match="no feature columns"):
        AutoencoderDetector(key_columns=["id"]).fit(frame)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_path_agrees_with_cpu(normal_table, incoming_table):
    options = {"categorical_columns": ["machine_type"], "key_columns": KEYS, **FAST, "epochs": 20}
    gpu = AutoencoderDetector(device="cuda", **options).fit(normal_table)
    assert next(gpu.module_.parameters()).device.type == "cuda"
    assert gpu.history_.device.startswith("cuda")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        gpu.save(tmp + "/m")
        cpu = AutoencoderDetector.load(tmp + "/m", device="cpu")
    gpu_scores, cpu_scores = gpu.score_samples(incoming_table), cpu.score_samples(incoming_table)
    # Trained with bf16 autocast on CUDA, but scored in float32 on both devices: the calibrated
    # threshold means the same wherever the model is loaded.
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-3, atol=1e-6)
    # The calibration scores behind the threshold, recomputed on the CPU, are those saved on the GPU.
    calibration_rows = normal_table.loc[gpu.split_index_["calibration"]]
    np.testing.assert_allclose(
        np.sort(cpu.score_samples(calibration_rows)),
        gpu.thresholder_.calibration_scores_,
        rtol=1e-3,
        atol=1e-6,
    )
    truth = incoming_table[LABEL_COLUMN] != "none"
    assert roc_auc_score(truth, gpu_scores) >= 0.9


def test_p_values_are_uniform_on_fresh_normal_data(fitted_detector):
    from scipy import stats

    from anomaly.data.synthetic import make_sensor_table

    fresh = make_sensor_table(3000, anomaly_fraction=0.0, seed=99)
    p = fitted_detector.p_values(fresh)
    assert ((p > 0) & (p <= 1)).all()
    # Conformal p-values are uniform over calibration draws; given one calibration set of n rows
    # their CDF is off by up to ~1.63/sqrt(n) (DKW, 99%), plus the same for the fresh sample.
    n_cal = len(fitted_detector.thresholder_.calibration_scores_)
    bound = 1.63 * (1 / np.sqrt(n_cal) + 1 / np.sqrt(len(p)))
    assert stats.kstest(p, "uniform").statistic < bound
    assert 0.02 <= fitted_detector.predict(fresh).mean() <= 0.08


def test_ensemble_scores_average_member_errors(normal_table, incoming_table):
    det = AutoencoderDetector(
        categorical_columns=["machine_type"],
        key_columns=KEYS,
        n_estimators=3,
        **{**FAST, "epochs": 5},
    ).fit(normal_table)
    assert len(det.module_.members) == 3
    member_scores = []
    x = torch.from_numpy(det.preprocessor_.transform(incoming_table)).to(det.device_)
    for member in det.module_.members:
        with torch.no_grad():
            member_scores.append(((member(x).x_hat - x) ** 2).mean(dim=1).cpu().numpy())
    np.testing.assert_allclose(
        det.score_samples(incoming_table), np.mean(member_scores, axis=0), rtol=1e-5
    )
    assert det.latent(incoming_table).shape == (
        len(incoming_table),
        3 * det.module_config_["latent_dim"],
    )
