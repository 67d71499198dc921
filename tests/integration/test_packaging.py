"""The package as a user gets it: built from a clean copy of the source (no stubs, as in a fresh clone) with
`python -m build` (the sdist, then a wheel built from that sdist), installed into a fresh virtualenv.

The stubs must import and every console script must run there: the build generates the stubs itself, and the
.proto files ship inside the package. pip's cache is reused, so only the first run on a machine downloads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from devtools.local_cluster import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

PROTOS = ("exchange.proto", "sequencer.proto", "types.proto")
IMPORT_CHECK = """
import pathlib, exchange
from exchange.v1 import exchange_pb2, exchange_pb2_grpc, sequencer_pb2, types_pb2
assert exchange_pb2.CreateOrderRequest(size=1).size == 1
print(exchange.proto_dir())
"""


def _run(*command: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def clean_copy(destination: Path) -> Path:
    """The files git would put in a clone (tracked, plus untracked ones it does not ignore), as they are in the
    working tree: no generated stubs, no virtualenv, no egg-info."""
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): `python -m build` builds the sdist from a clean copy, then the wheel from that sdist."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone has")
    source = clean_copy(tmp_path_factory.mktemp("clone"))
    assert not list((source / "exchange" / "v1").glob("*_pb2*")), "a clean copy has no generated stubs"
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", dist, source)
    [sdist], [wheel] = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    return sdist, wheel


def test_the_sdist_holds_the_protos_and_no_generated_code(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    for proto in PROTOS:
        assert any(name.endswith(f"/proto/exchange/v1/{proto}") for name in names), names
    assert not [name for name in names if "_pb2" in name], "generated code is built, never shipped as source"


def test_the_wheel_holds_stubs_and_protos(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for stem in ("exchange", "sequencer", "types"):
        assert f"exchange/v1/{stem}_pb2.py" in names and f"exchange/v1/{stem}_pb2_grpc.py" in names, sorted(names)
        assert f"exchange/v1/{stem}_pb2.pyi" in names
    for proto in PROTOS:
        assert f"exchange/proto/exchange/v1/{proto}" in names, sorted(names)
    for page in ("index.html", "app.js", "charts.js", "app.css", "favicon.svg"):  # the web console's
        assert f"exchange/web/static/{page}" in names, sorted(names)


def test_a_fresh_virtualenv_imports_the_stubs_and_runs_every_console_script(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, wheel = built
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run(python, "-m", "pip", "install", "--quiet", wheel)
    # from outside the checkout, so nothing of the source tree can be imported by accident
    proto_dir = Path(_run(python, "-c", IMPORT_CHECK, cwd=tmp_path).strip())
    assert proto_dir.is_relative_to(venv), f"the protos must come from the installed package, not {proto_dir}"
    for proto in PROTOS:
        assert (proto_dir / "exchange" / "v1" / proto).is_file()
    for script, words in (("exchange-cli", "exchange-cli"), ("exchange-node", "--markets"),
                          ("exchange-sequencer", "--data-dir"), ("exchange-web", "--consul-token")):
        assert words in _run(bin_dir / script, "--help", cwd=tmp_path), script
