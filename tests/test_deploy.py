"""Deploying a new version into a running server: it is registered, and activated only when its
held-out metric is not worse than the active version's on the same data (or when forced).

The gate reads the card's ``comparison`` (written by the trainers, see test_cli_refocus.py for a
real one); here cards carry hand-made comparisons so that each branch is exercised on a real
server with real versions."""

import numpy as np
import pytest

from livescope.client import Result, StreamClient
from livescope.deploy import DeployError, active_version, deploy
from livescope.modelcard import CARD_FILE, Comparison, ModelCard
from livescope.launch import free_port
from livescope.models.identity import write_identity


def version_with(repo, version, *, against=None, new=1.0, active=1.0):
    """identity@version, its card carrying a comparison with ``against`` (PSNR-like: higher wins)."""
    folder = write_identity(repo, version=version)
    card = ModelCard.load(folder / CARD_FILE)
    if against is not None:
        card = card.model_copy(update={"comparison": Comparison(
            against=against, metric="psnr_db_restored", higher_is_better=True, new_value=new,
            active_value=active)})
        card.dump(folder / CARD_FILE)
    return card


def served_by(srv) -> str:
    with StreamClient(srv.frames, pipeline=["identity"]) as c:
        c.connect()
        c.submit(np.ones((8, 8), np.uint16))
        (outcome,) = list(c.outcomes(timeout_s=30))
    assert isinstance(outcome, Result)
    return outcome.header.model


@pytest.fixture
def serving_v1(own_server, tmp_path):
    """A server reading tmp_path/models, serving identity@1."""
    repo = tmp_path / "models"
    version_with(repo, 1)
    srv = own_server("--models", str(repo))
    assert served_by(srv) == "identity@1"
    return srv, repo


def test_a_version_not_worse_than_the_active_one_is_swapped_in(serving_v1):
    srv, repo = serving_v1
    card = version_with(repo, 2, against="identity@1", new=31.0, active=30.0)
    outcome = deploy(srv.frames, card)
    assert outcome.activated and outcome.active == "identity@2" and outcome.previous == "identity@1"
    assert "31 vs 30 of identity@1" in outcome.reason
    assert served_by(srv) == "identity@2"


def test_a_worse_version_is_registered_but_the_active_one_stays(serving_v1):
    srv, repo = serving_v1
    card = version_with(repo, 2, against="identity@1", new=29.0, active=30.0)
    outcome = deploy(srv.frames, card)
    assert not outcome.activated and outcome.active == "identity@1"
    assert "worse than it" in outcome.reason and "--force" in outcome.reason
    assert served_by(srv) == "identity@1"
    assert active_version(srv.frames, "identity").ref == "identity@1"  # pinned, though @2 is newer


def test_force_activates_a_worse_version(serving_v1):
    srv, repo = serving_v1
    card = version_with(repo, 2, against="identity@1", new=29.0, active=30.0)
    outcome = deploy(srv.frames, card, force=True)
    assert outcome.activated and "forced" in outcome.reason
    assert served_by(srv) == "identity@2"


def test_a_version_without_a_comparison_needs_force_when_another_is_active(serving_v1):
    srv, repo = serving_v1
    card = version_with(repo, 2)
    assert not deploy(srv.frames, card).activated
    assert served_by(srv) == "identity@1"


def test_a_comparison_with_a_version_no_longer_active_needs_force(serving_v1):
    srv, repo = serving_v1
    version_with(repo, 2)
    deploy(srv.frames, version_with(repo, 3, against="identity@1", new=99.0, active=1.0), force=True)
    card = version_with(repo, 4, against="identity@1", new=99.0, active=1.0)  # trained before @3 went live
    outcome = deploy(srv.frames, card)
    assert not outcome.activated and "identity@3 is active now" in outcome.reason


def test_the_first_version_of_a_model_is_activated(own_server, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    srv = own_server("--models", str(repo))
    card = version_with(repo, 1)
    outcome = deploy(srv.frames, card)
    assert outcome.activated and outcome.previous is None


def test_a_version_the_server_cannot_see_is_refused_with_the_reason(serving_v1, tmp_path):
    srv, _ = serving_v1
    card = version_with(tmp_path / "elsewhere", 5, against="identity@1", new=31.0, active=30.0)
    with pytest.raises(DeployError, match="does not see identity@5.*--models"):
        deploy(srv.frames, card)
    assert served_by(srv) == "identity@1"


def test_an_unreachable_server_is_a_one_line_error(tmp_path):
    card = version_with(tmp_path, 1)
    with pytest.raises(DeployError, match="no livescope server answered"):
        deploy(f"tcp://127.0.0.1:{free_port()}", card)
