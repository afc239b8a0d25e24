"""service/version_policy.py: which versions a model serves, at start-up and in model control."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service import v2_model
from service.registry import ModelRegistry
from service.repository import ModelControl
from service.settings import Settings
from service.version_policy import VersionPolicy, served_cards, unserved
from tests.conftest import COMMITTED_MODELS


def test_select_and_tritons_form() -> None:
    versions = ["1", "2", "10"]
    assert VersionPolicy().select(versions) == {"1", "2", "10"}
    assert VersionPolicy(latest=2).select(versions) == {"2", "10"}
    assert VersionPolicy(specific=["1", "7"]).select(versions) == {"1"}
    assert VersionPolicy(latest=1).config() == {"latest": {"num_versions": 1}}
    assert VersionPolicy(specific=["1"]).config() == {"specific": {"versions": [1]}}
    assert VersionPolicy().config() == {"all": {}}
    with pytest.raises(ValidationError, match="not both"):
        VersionPolicy(latest=1, specific=["1"])
    cards = [Path(f"m/{n}/{v}/model.json") for n, v in [("a", "1"), ("a", "2"), ("b", "1"), ("b", "3")]]
    assert served_cards(cards, {"a": VersionPolicy(latest=1)}) == [cards[1], cards[2], cards[3]]


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_VERSION_POLICY",
                       '{"sentiment": {"latest": 1}, "translate-en-de": {"specific": ["1"]}}')
    assert Settings().version_policy == {"sentiment": VersionPolicy(latest=1),
                                         "translate-en-de": VersionPolicy(specific=["1"])}


def test_only_the_selected_versions_load(tmp_path: Path) -> None:
    source = COMMITTED_MODELS / "sentiment" / "1"
    (tmp_path / "sentiment").mkdir()
    (tmp_path / "sentiment" / "1").symlink_to(source.resolve())
    two = tmp_path / "sentiment" / "2"
    two.mkdir()
    for f in source.iterdir():
        if f.name != "model.json":
            (two / f.name).symlink_to(f.resolve())
    (two / "model.json").write_text(json.dumps({**json.loads((source / "model.json").read_text()), "version": "2"}))
    settings = Settings(model_repository=tmp_path, warmup=False, version_policy={"sentiment": VersionPolicy(latest=1)})
    registry = ModelRegistry.load(settings)
    assert [(m.name, m.version) for m in registry.all()] == [("sentiment", "2")]
    assert v2_model.config(registry, settings, "sentiment", None)["version_policy"] == {"latest": {"num_versions": 1}}
    assert ModelControl(registry, settings).index() == [
        {"name": "sentiment", "version": "1", "state": "UNAVAILABLE", "reason": "not selected by the version policy"},
        {"name": "sentiment", "version": "2", "state": "READY"}]


def test_what_will_not_be_served_is_said(tmp_path: Path) -> None:
    """A typo in the policy, a version it names that is not there, a version folder that is no
    number: each dropped a model without a word, from a server that then said it was ready."""
    for version in ("1", "v2", "01"):  # "01" and "1" were served as two versions that compare equal
        (tmp_path / "sentiment" / version).mkdir(parents=True)
        (tmp_path / "sentiment" / version / "model.json").write_text("{}")
    (tmp_path / "sentiment" / "2").mkdir()  # a version folder without its card was ignored without a word
    policies = {"sentimnt": VersionPolicy(latest=1), "sentiment": VersionPolicy(specific=["7"])}
    assert unserved(tmp_path, policies) == [
        f"{tmp_path / 'sentiment' / '01'}: not served: a version folder's name must be a number without leading "
        "zeros (e.g. 1)",
        f"{tmp_path / 'sentiment' / 'v2'}: not served: a version folder's name must be a number without leading "
        "zeros (e.g. 1)",
        f"{tmp_path / 'sentiment' / '2'}: not served: no model.json in it",
        f"SEQSERVE_VERSION_POLICY names version(s) 7 of 'sentiment', which {tmp_path} does not hold (it holds: 1)",
        "model 'sentiment' is not served: SEQSERVE_VERSION_POLICY selects none of its versions",
        f"SEQSERVE_VERSION_POLICY names model 'sentimnt', which {tmp_path} does not hold (it holds: sentiment)"]
    assert unserved(tmp_path, {"sentiment": VersionPolicy(latest=1)}) == unserved(tmp_path, {})[:3]


def test_a_repository_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    from service.registry import ModelLoadError

    with pytest.raises(ModelLoadError, match="no such folder"):
        ModelRegistry.load(Settings(model_repository=tmp_path / "nope", warmup=False))


def test_a_folder_the_server_cannot_read_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume mounted with another owner: a model folder the server cannot list was passed over
    without a word (the server said ready without it), and a version folder raised a traceback.
    (os.access stands in for the permissions: the suite may run as root, which reads anything.)"""
    import os

    for model in ("sentiment", "translate-en-de"):
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "model.json").write_text("{}")
    locked = {tmp_path / "sentiment", tmp_path / "translate-en-de" / "1"}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) not in locked and real_access(path, mode))
    uid = os.getuid()
    assert unserved(tmp_path, {}) == [
        f"{tmp_path / 'sentiment'}: not served: the folder cannot be read (permissions; the server runs as uid {uid})",
        f"{tmp_path / 'translate-en-de' / '1'}: not served: the folder cannot be read (permissions; the server runs "
        f"as uid {uid})"]
