"""The scheduled deployments are built with their schedules and typed parameters (nothing is served)."""

from flows.deployments import ServeSettings, build_deployments


def test_two_scheduled_deployments_with_typed_parameters():
    settings = ServeSettings(landing="in", output_dir="out", train_cron="30 3 * * *")
    retrain, score = build_deployments(settings)
    assert (retrain.name, score.name) == ("nightly-retrain", "score-landing")
    assert retrain.schedules[0].schedule.cron == "30 3 * * *"
    assert score.schedules[0].schedule.interval.total_seconds() == 300
    assert score.parameters["landing"] == "in" and score.parameters["output_dir"] == "out"
    # Unset train settings: the nightly retrain reuses the champion's own.
    assert retrain.parameters["settings"] is None
    assert retrain.parameters["reuse_champion_settings"] is True
    given = ServeSettings(train_settings={"quantile": 0.99}, model_name="sensors")
    retrain, score = build_deployments(given)
    assert retrain.parameters["settings"]["quantile"] == 0.99
    assert retrain.parameters["settings"]["gate"]["confidence"] == 0.99
    assert retrain.parameters["reuse_champion_settings"] is False
    assert retrain.parameters["model_name"] == score.parameters["model_name"] == "sensors"
    # The parameter schema is what the Prefect UI renders as a form.
    from prefect.utilities.callables import parameter_schema

    from flows.landing import landing_flow

    schema = parameter_schema(landing_flow).model_dump()
    assert {"landing", "output_dir", "alerts", "notification_block"} <= set(schema["properties"])
    assert "AlertSettings" in schema["definitions"]
