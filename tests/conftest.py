"""Fixtures shared by several test modules."""
import pytest

from agrepa import cli
from test_workflow_support import REPO


@pytest.fixture(scope="session")
def paper_fixtures(tmp_path_factory):
    """The directory `agrepa fixtures paper` writes for paper.yaml (built once per session, seed 0)."""
    out = tmp_path_factory.mktemp("paper_fixtures") / "paper"
    assert cli.main(["fixtures", "paper", "--config", str(REPO / "config" / "config.yaml"),
                     "--config", str(REPO / "config" / "paper.yaml"), "--out", str(out), "--seed", "0"]) == 0
    return out
