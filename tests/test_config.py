import pytest
from pydantic import ValidationError

from anomaly import AutoencoderDetector
from anomaly.config import DetectorSettings, TrainSettings


def test_detector_settings_mirror_the_estimator():
    assert set(DetectorSettings.model_fields) == set(AutoencoderDetector().get_params())


def test_yaml_settings_build_the_detector(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "quantile: 0.99\ndetector:\n  epochs: 7\n  hidden_layers: [16, 8]\n  key_columns: [id]\n"
    )
    settings = TrainSettings.from_yaml(path)
    det = settings.build_detector()
    assert settings.quantile == 0.99
    assert (
        det.epochs == 7 and list(det.hidden_layers) == [16, 8] and list(det.key_columns) == ["id"]
    )


@pytest.mark.parametrize(
    "data", [{"detector": {"epoch": 3}}, {"quantiles": 0.9}, {"quantile": 1.5}]
)
def test_unknown_or_bad_settings_are_refused(data):
    with pytest.raises(ValidationError):
        TrainSettings(**data)
