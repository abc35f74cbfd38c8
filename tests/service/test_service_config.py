"""Server settings: flag over ATS_* environment over default, and where each came from."""

from __future__ import annotations

import dataclasses

import pytest

from service.config import Config, default_model_repository, describe, env_name, load_config
from tests.support import REPO_ROOT


def test_defaults():
    config, sources = load_config([], environ={})
    assert (config.port, config.metrics_port, config.max_message_bytes) == (8500, 8502, 64 << 20)
    assert set(sources.values()) == {"default"}
    assert config.resolved_repository() == REPO_ROOT / "models"  # the shipped models, found from the package
    assert default_model_repository().resolve() == (REPO_ROOT / "models").resolve()


def test_flag_over_environment_over_default():
    environ = {
        "ATS_PORT": "9000",
        "ATS_METRICS_PORT": "9002",
        "ATS_LOG_FORMAT": "json",
        "ATS_QUEUE_TIMEOUT": "0.5",
    }
    config, sources = load_config(["--port", "9100", "--model-repository", "repo"], environ=environ)
    assert (config.port, config.metrics_port, config.log_format, config.queue_timeout) == (
        9100,
        9002,
        "json",
        0.5,
    )
    assert (sources["port"], sources["metrics_port"], sources["max_uploads"]) == ("flag", "env", "default")
    described = describe(config, sources)
    assert described["port"] == {"value": 9100, "from": "flag"}
    assert described["model_repository"]["value"] == "repo"


def test_every_setting_has_a_flag_and_an_environment_variable():
    for field in dataclasses.fields(Config):
        assert env_name(field.name) == "ATS_" + field.name.upper()
        flag = "--" + field.name.replace("_", "-")
        config, sources = load_config([flag, str(field.default)], environ={})
        assert sources[field.name] == "flag" and getattr(config, field.name) == field.default


@pytest.mark.parametrize("environ", [{"ATS_PORT": "eighty"}, {"ATS_LOG_FORMAT": "xml"}])
def test_bad_environment_values_are_refused(environ, capsys):
    with pytest.raises(SystemExit):
        load_config([], environ=environ)
    assert next(iter(environ)) in capsys.readouterr().err


def test_the_readme_documents_every_setting():
    readme = (REPO_ROOT / "service" / "README.md").read_text()
    for field in dataclasses.fields(Config):
        assert f"| `--{field.name.replace('_', '-')}` | `{env_name(field.name)}` |" in readme, field.name


@pytest.mark.parametrize(
    "args",
    [
        ["--view-oversample", "0"],
        ["--view-oversample", "17"],
        ["--batch-threads", "0"],
        ["--batch-max-size", "-1"],
    ],
)
def test_out_of_range_settings_are_refused_at_start(args, capsys):
    with pytest.raises(SystemExit):
        load_config(args, environ={})
    assert args[0] in capsys.readouterr().err
