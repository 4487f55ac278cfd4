"""The controller venv installs from the hashed lock even when the interpreter's pip is old.

Debian 12's python3 ships pip 23.0.1, which refuses the lock (`coverage[toml]` from
pytest-cov counts as an unpinned requirement). scripts/venv.sh, the step `make setup`
runs, must bootstrap the lock's own pip first. This test builds exactly that situation:
a new venv downgraded to pip 23.0.1, then the project's own venv step against the lock.
It needs PyPI (as `make setup` does) and takes about a minute with a warm pip cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "dev.txt"
OLD_PIP = "23.0.1"


def pip_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[1]


@pytest.fixture
def old_pip_venv(tmp_path: Path) -> Path:
    python = shutil.which("python3")
    assert python, "python3 is not on PATH"
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"pip=={OLD_PIP}"],
        check=True,
        timeout=300,
    )
    assert pip_version(venv) == OLD_PIP
    return venv


def test_the_old_pip_alone_cannot_install_the_lock(old_pip_venv: Path) -> None:
    # The control: without the bootstrap, this pip stops on the lock. If it ever stops
    # failing, the test below no longer proves anything and this one says so.
    result = subprocess.run(
        [
            str(old_pip_venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--require-hashes",
            "-r",
            str(LOCK),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode != 0, "pip 23.0.1 installed the lock unaided: re-check this test"
    assert "must have their versions pinned" in result.stderr


def test_the_venv_step_installs_the_lock_over_an_old_pip(old_pip_venv: Path) -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "venv.sh"), str(old_pip_venv), str(LOCK)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pinned = re.search(r"^pip==(\S+)", LOCK.read_text(), re.MULTILINE)
    assert pinned, "the lock pins no pip"
    assert pip_version(old_pip_venv) == pinned.group(1)
    # What the failure was about: the extra's package is installed, and ansible runs.
    subprocess.run(
        [str(old_pip_venv / "bin" / "python"), "-c", "import coverage, ansible, molecule"],
        check=True,
    )
