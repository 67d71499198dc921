"""Generates the sync client from the asyncio one: exchange/client/sync.py from exchange/client/aio.py.

    python -m devtools.unasync           # writes exchange/client/sync.py (make client-sync)
    python -m devtools.unasync --check   # exits 1, with a diff, if the committed file is not what aio.py makes

Line by line, as httpcore's scripts/unasync.py does: `async def`/`async for`/`async with` lose their `async`,
`await ` goes, and names and a few docstring words are replaced (SUBS). Line N of aio.py is line N + 1 of
sync.py (below the header). What the two clients do their own way (threads or tasks, the duplex
order-entry stream) is not rewritten: aio.py imports it from `exchange.client.aio_concurrency`, sync.py the same
names from `exchange.client.sync_concurrency`, both written by hand. Every substitution must be used, so a rule
that no longer matches anything is found rather than kept. The generated file is committed (users install without
this tool); tests/unit/test_client_sync.py and `make lint` fail when it is out of date.

Not the `unasync` package from PyPI: it replaces single names only, so it leaves the docstrings (the generated
`Client` would describe itself as asyncio) and cannot turn `grpc.aio.X` into `grpc.X`; httpcore, the example
followed here, moved from it to a script like this one.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("exchange/client/aio.py")
TARGET = Path("exchange/client/sync.py")
HEADER = (f"# Generated from {SOURCE} by devtools/unasync.py (`make client-sync`): edit {SOURCE.name}, not this "
          "file.\n")

# (pattern, replacement), applied in order to every line
SUBS: list[tuple[str, str]] = [
    # what each flavour does its own way, and how it sleeps and opens channels
    (r"^from exchange\.client\.aio_concurrency import ", "from exchange.client.sync_concurrency import "),
    (r"^import asyncio$", "import time"),
    (r"\basyncio\.sleep\(", "time.sleep("),
    (r"\bgrpc\.aio\.", "grpc."),
    # names
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncBookSubscription\b", "BookSubscription"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    # syntax
    (r"\basync (?=(def|for|with)\b)", ""),
    (r"\bawait ", ""),
    # the docstrings' words
    (r'^"""The asyncio client:', '"""The blocking client:'),
    (r"\ba background task\b", "a background thread"),
    (r"\bMake and use it inside one event loop\.", "Safe to use from several threads."),
]


def unasync(source: str, subs: list[tuple[str, str]] = SUBS) -> str:
    """The sync module for the text of the asyncio one; ValueError if a substitution is not used."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in subs]
    used: set[str] = set()
    lines = []
    for line in source.splitlines(keepends=True):
        for pattern, replacement in compiled:
            line, count = pattern.subn(replacement, line)
            if count:
                used.add(pattern.pattern)
        lines.append(line)
    unused = [pattern for pattern, _ in subs if pattern not in used]
    if unused:
        raise ValueError(f"devtools/unasync.py: substitutions that match nothing in {SOURCE}: {unused}")
    return HEADER + "".join(lines)


def expected(root: Path = ROOT) -> str:
    """What exchange/client/sync.py must hold."""
    return unasync((root / SOURCE).read_text())


def main(argv: list[str]) -> int:
    want = expected()
    target = ROOT / TARGET
    if "--check" not in argv:
        target.write_text(want)
        print(f"wrote {TARGET} from {SOURCE}")
        return 0
    have = target.read_text() if target.exists() else ""
    if have == want:
        return 0
    sys.stdout.writelines(difflib.unified_diff(have.splitlines(keepends=True), want.splitlines(keepends=True),
                                               str(TARGET), f"{TARGET} as {SOURCE} makes it"))
    print(f"\n{TARGET} is out of date: run `make client-sync` (python -m devtools.unasync) and commit it")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
