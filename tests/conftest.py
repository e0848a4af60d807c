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


# --- where the suite's time goes (printed at the end of every run: CI's split) ----------------------
_PARTS = ("rehearsal", "slurm")   # markers timed on their own; everything else is "fast suite"
_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    part = next((m for m in _PARTS if m in report.keywords), "fast suite")
    _seconds[part] = _seconds.get(part, 0.0) + report.duration   # setup + call + teardown


def pytest_terminal_summary(terminalreporter):
    if _seconds:
        split = ", ".join(f"{part} {_seconds[part]:.0f} s" for part in ("fast suite", *_PARTS) if part in _seconds)
        terminalreporter.write_line(f"time by part (setup + call + teardown): {split}")
