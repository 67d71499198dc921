"""The tracked tree works on any machine: no symlink out of the repository, no path of one machine.

The first test checks this repository itself (`make test` also runs the same check before it installs
anything); the others show the check finds each kind of problem in a throwaway repository.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.repo_hygiene import check, machine_paths

ROOT = Path(__file__).resolve().parents[2]
# Built from parts so that this file does not itself name a machine's path.
HOME = "/" + "home/dev"
WORKTREE = "/" + "work/wt-ha"


def test_this_repository_tracks_nothing_that_works_only_on_one_machine() -> None:
    findings = check(ROOT)
    assert not findings, "\n".join(map(str, findings))


def _repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def _track(repo: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)


def test_a_symlink_to_an_absolute_path_is_found_and_named(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    os.symlink(WORKTREE + "/.cache", repo / ".cache")
    _track(repo)
    [finding] = check(repo)
    assert finding.path == ".cache"
    assert WORKTREE in finding.problem


def test_a_symlink_leaving_the_repository_is_found_and_one_inside_is_not(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "docs").mkdir()
    (repo / "docs" / "README.md").write_text("inside\n")
    os.symlink("../../shared", repo / "docs" / "shared")
    os.symlink("README.md", repo / "docs" / "index.md")
    os.symlink("../docs", repo / "docs" / "self")
    _track(repo)
    assert [finding.path for finding in check(repo)] == ["docs/shared"]


def test_a_text_file_naming_a_machines_path_is_found_with_its_line(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "conf.toml").write_text(f'ok = "relative/path"\ncache = "{HOME}/p2p/.cache"\n')
    (repo / "blob.bin").write_bytes(b"\0" + HOME.encode() + b"/p2p")  # binary files are not read
    _track(repo)
    [finding] = check(repo)
    assert finding.path == "conf.toml:2"
    assert HOME + "/p2p/.cache" in finding.problem


def test_a_merge_conflict_left_in_a_file_is_found_with_its_lines(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    ours, theirs = "<" * 7 + " HEAD", ">" * 7 + " client"
    (repo / "README.md").write_text(f"Title\n=====\n{ours}\nmine\n{'=' * 7}\nyours\n{theirs}\n")
    (repo / "ok.md").write_text(f"Heading\n{'=' * 7}\n")  # exactly 7: indistinguishable from a marker
    _track(repo)
    assert [finding.path for finding in check(repo)] == ["README.md:3", "README.md:5", "README.md:7", "ok.md:2"]


@pytest.mark.parametrize(
    "text",
    [
        HOME + "/x.py",
        "/" + "root/.cache/pip",
        "cd " + WORKTREE + " && make",
        "/" + "tmp/pytest-of-root/pytest-3/x",
        "/" + "var/tmp/build",
        "/" + "Users/dev/src",
        "/" + "private/var/folders/xy/T/tmp1",
    ],
)
def test_paths_of_a_development_machine_are_recognised(text: str) -> None:
    assert machine_paths(text)


@pytest.mark.parametrize(
    "text",
    ["/tmp alone in prose", "http://host/work/x", "relative/tmp/file", "/usr/bin/consul", "/etc/apt/sources.list"],
)
def test_ordinary_paths_and_urls_are_not_findings(text: str) -> None:
    assert not machine_paths(text)
