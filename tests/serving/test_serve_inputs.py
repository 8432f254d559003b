"""Bad inputs of ppml serve and ppml rollback: one line naming the field and the fix, before anything starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppml.errors import PPMLError
from tests.graph_support import write_policy


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("output", "full", "field 'serving.output'"),
        ("probability_decimals", 9, "field 'serving.probability_decimals'"),
        ("requests_per_minute", 0, "field 'serving.requests_per_minute'"),
        ("identifiers", "log", "field 'serving.identifiers'"),
        ("poll_seconds", 0, "field 'serving.poll_seconds'"),
    ],
)
def test_bad_serving_values_are_refused(tmp_path: Path, field: str, value: object, expected: str) -> None:
    from ppml.policy import load_policy

    policy = write_policy(tmp_path, **{f"serving__{field}": value})
    with pytest.raises(PPMLError, match=expected) as caught:
        load_policy(policy)
    assert "\n" not in str(caught.value) and "fix:" in str(caught.value)


def test_default_serving_section_is_the_safe_end(tmp_path: Path) -> None:
    from ppml.policy import load_policy

    serving = load_policy(write_policy(tmp_path)).policy.serving
    assert serving.output == "label" and serving.identifiers == "refuse" and serving.requests_per_minute == 60


def test_api_key_is_required_and_strong() -> None:
    from ppml.serving.app import API_KEY_ENV, api_keys_from_env, client_fingerprint

    with pytest.raises(PPMLError, match=f"field '{API_KEY_ENV}': not set"):
        api_keys_from_env({})
    with pytest.raises(PPMLError, match="shorter than 16 characters"):
        api_keys_from_env({API_KEY_ENV: "a" * 20 + ",short"})
    keys = api_keys_from_env({API_KEY_ENV: "k" * 20 + ", " + "m" * 20})
    assert sorted(keys.values()) == ["k" * 20, "m" * 20] and client_fingerprint("k" * 20) in keys
    assert all("k" * 20 not in name for name in keys)


def test_serve_without_key_or_production_version_fails_in_one_line(tmp_path: Path) -> None:
    from ppml.cli import app

    policy = write_policy(tmp_path)
    policy.write_text(policy.read_text().replace("name: adult-income-gdpr", f"name: nothing-{uuid.uuid4().hex[:8]}"))
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--policy", str(policy)], env={"PPML_SERVE_API_KEY": ""})
    assert missing.exit_code == 2 and "PPML_SERVE_API_KEY" in missing.output and "Traceback" not in missing.output
    unpromoted = runner.invoke(app, ["serve", "--policy", str(policy)], env={"PPML_SERVE_API_KEY": "x" * 32})
    assert unpromoted.exit_code == 2 and "no version is in production" in unpromoted.output
    rollback = runner.invoke(app, ["rollback", "--policy", str(policy)])
    assert rollback.exit_code == 2 and "nothing is in production" in rollback.output


def test_a_run_without_serving_spec_is_refused() -> None:
    import os

    from mlflow import MlflowClient

    from ppml.serving.spec import SPEC_ARTIFACT, load_serving_spec

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("serving-inputs") or client.create_experiment("serving-inputs")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run = client.create_run(experiment_id)
    with pytest.raises(PPMLError, match=f"field '{SPEC_ARTIFACT}': the training run has no serving spec"):
        load_serving_spec(client, run.info.run_id, "m v1")
    client.log_dict(run.info.run_id, {"format": 99}, SPEC_ARTIFACT)
    with pytest.raises(PPMLError, match="not a format-1 serving spec"):
        load_serving_spec(client, run.info.run_id, "m v1")


def test_demo_generates_a_private_key_and_never_prints_it(tmp_path: Path) -> None:
    from ppml.cli import app

    policy = write_policy(tmp_path)
    policy.write_text(policy.read_text().replace("name: adult-income-gdpr", f"name: demo-{uuid.uuid4().hex[:8]}"))
    home = tmp_path / "home"
    env = {"PPML_SERVE_API_KEY": "", "PPML_HOME": str(home)}
    result = CliRunner().invoke(app, ["serve", "--policy", str(policy), "--demo"], env=env)
    key_file = home / "secrets" / "serve_demo_api_key"
    assert "DEMO API KEY" in result.output and str(key_file) in result.output
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.read_text() not in result.output
    assert result.exit_code == 2 and "no version is in production" in result.output  # the key was accepted
