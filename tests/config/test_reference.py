"""config.toml, `init` and docs/configuration.md are rendered from the settings model: they
stay what the model says, and the model documents every key."""
from __future__ import annotations

import tomllib

import pytest

from openai_gateway.config import parse, reference

from ..conftest import ROOT

REGENERATE = "run `make reference` (python -m openai_gateway.config.reference) and commit"
ENV = {"OPENAI_API_KEY": "k", "AZURE_OPENAI_KEY": "k"}


@pytest.mark.parametrize("name", sorted(reference.FILES))
def test_the_checkouts_file_is_what_the_model_renders(name):
    assert (ROOT / name).read_text() == reference.FILES[name](), f"{name} is out of date: " \
        f"{REGENERATE}"


def test_the_rendered_file_is_every_default():
    rendered = parse(tomllib.loads(reference.toml()), ENV)
    assert rendered == parse({}, ENV)
    assert rendered.redacted() == parse({}, ENV).redacted()


def test_every_key_and_section_is_documented():
    undocumented = [f"{section.key}.{key.name}" for section, plain in reference.sections()
                    for key in plain if not key.doc]
    assert not undocumented, "give these fields a `#:` comment: " + ", ".join(undocumented)
    assert all(section.doc for section, _ in reference.sections())


def test_every_key_is_in_the_file_or_its_example():
    text = reference.toml()
    for section, plain in reference.sections():
        where = text if section.kind == "table" else reference.EXAMPLES[section.key]
        missing = [k.name for k in plain if f"{k.name} = " not in where]
        if section.key != "prices":  # price rows show the rates they need, not all of them
            assert not missing, f"{section.key}: {missing}"


@pytest.mark.parametrize("key", sorted(reference.EXAMPLES))
def test_every_example_is_a_valid_configuration(key):
    s = parse(tomllib.loads(reference.EXAMPLES[key]), ENV)
    value = s
    for part in key.split("."):
        value = getattr(value, part)
    assert value, f"the example of {key} configures nothing"


def test_a_comment_covers_the_fields_right_below_it():
    """speech_formats has no comment of its own: it shares speech_voices'."""
    [section] = [s for s, _ in reference.sections() if s.key == "validation"]
    keys = {k.name: k for k in reference.keys(section.cls)}
    assert keys["speech_formats"].shared
    assert keys["speech_formats"].doc == keys["speech_voices"].doc
    assert not keys["speech_voices"].shared and not keys["max_upload_bytes"].shared


def test_the_check_mode_names_a_stale_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reference, "ROOT", tmp_path)
    assert reference.main(["--check"]) == 1
    assert "config.toml: out of date" in capsys.readouterr().err
    assert not (tmp_path / "config.toml").exists()
    assert reference.main([]) == 0
    assert (tmp_path / "config.toml").read_text() == reference.toml()
    assert reference.main(["--check"]) == 0
