"""Checks that the tracked tree works on any machine, not only on the one it was written on.

    python -m devtools.repo_hygiene          # exit 1 and one line per finding, naming the file

Three kinds of findings; the first two once broke every fresh clone (a tracked `.cache` symlink to one
development machine's worktree), the third once reached main inside a README merged by hand:

- a tracked symlink whose target is absolute or leaves the repository;
- a tracked text file that names an absolute path of a development machine: something inside a home
  directory (Linux's, macOS's or root's), inside this workplace's worktrees (under "work" at the root),
  or inside a temporary directory (Linux's or macOS's). MACHINE_PATH is the exact rule;
- a tracked text file holding a merge-conflict marker line (CONFLICT_MARKER).

Only the standard library and git: `make test` runs it before it installs anything.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# An absolute path of one machine: it must start a path (not continue a URL or another path) and name
# something inside the directory, so `/tmp` alone in prose or `http://host/work/x` does not count.
# The slashes are escaped so that this file does not name the paths it looks for.
MACHINE_PATH = re.compile(
    r"(?<![\w.:/~-])("
    r"\/home\/[\w.-]+|\/Users\/[\w.-]+|\/root|\/work|\/tmp|\/var\/tmp|\/private\/var\/folders"
    r")\/(?!\.\.)[\w.-][\w./-]*"
)
# A line git writes around a conflict it could not resolve: 7 of "<", "=" or ">" (the "=" line alone, so
# that a Markdown or reST underline of another length is not one; one of exactly 7 is reported). Built from
# parts, like MACHINE_PATH.
CONFLICT_MARKER = re.compile("^(" + "<" * 7 + " |" + "=" * 7 + "$|" + ">" * 7 + " )")
SYMLINK_MODE = "120000"
TEXT_SAMPLE = 8192  # bytes read to decide whether a file is text (a NUL byte means binary)


@dataclass(frozen=True)
class Finding:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def tracked_entries(root: Path) -> Iterator[tuple[str, str]]:
    """(mode, path) of every file in git's index under root."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--stage", "-z"], check=True, capture_output=True
    ).stdout.decode()
    for record in out.split("\0"):
        if record:
            meta, path = record.split("\t", 1)
            yield meta.split()[0], path


def symlink_problem(root: Path, path: str) -> str | None:
    """Why the tracked symlink at path would break on another machine, or None."""
    target = os.readlink(root / path)
    if target.startswith("/"):
        return f"tracked symlink to the absolute path {target!r}: it exists only where it was made"
    resolved = os.path.normpath(PurePosixPath(path).parent / target)
    if resolved == ".." or resolved.startswith("../"):
        return f"tracked symlink to {target!r}, outside the repository"
    return None


def machine_paths(text: str) -> list[tuple[int, str]]:
    """(line number, path) of every development-machine path in text."""
    return [
        (number, match.group(0))
        for number, line in enumerate(text.splitlines(), start=1)
        for match in MACHINE_PATH.finditer(line)
    ]


def conflict_markers(text: str) -> list[int]:
    """Line numbers of the merge-conflict markers in text."""
    return [number for number, line in enumerate(text.splitlines(), start=1) if CONFLICT_MARKER.match(line)]


def check(root: Path) -> list[Finding]:
    findings: list[Finding] = []
    for mode, path in tracked_entries(root):
        if mode == SYMLINK_MODE:
            if problem := symlink_problem(root, path):
                findings.append(Finding(path, problem))
            continue
        try:
            data = (root / path).read_bytes()
        except FileNotFoundError:  # deleted in the work tree, not yet in the index
            continue
        if b"\0" in data[:TEXT_SAMPLE]:
            continue
        text = data.decode("utf-8", errors="replace")
        for number, found in machine_paths(text):
            findings.append(Finding(f"{path}:{number}", f"names {found!r}, a path of one development machine"))
        for number in conflict_markers(text):
            findings.append(Finding(f"{path}:{number}", "a merge-conflict marker: the merge was not finished"))
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=".", type=Path, help="the repository (default: .)")
    root = parser.parse_args(argv).root.resolve()
    findings = check(root)
    for finding in findings:
        print(f"repo-hygiene: {finding}", file=sys.stderr)
    if findings:
        print(
            f"repo-hygiene: {len(findings)} finding(s): a fresh clone on another machine would break. "
            "Untrack the file (git rm --cached), make the path relative, or finish the merge.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
