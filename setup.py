"""The build step that makes the gRPC stubs: setuptools' `build_py`, plus protoc over `proto/`.

Every build of the package runs it (`pip install .`, `pip install git+...`, `python -m build`: the sdist ships
`proto/`, never generated code), so an installed package always holds `exchange/v1/*_pb2*.py` and, under
`exchange/proto/`, the .proto files they were made from (`exchange.proto_dir()` finds them). An editable install
(`pip install -e .`) generates the stubs into the source tree instead, where `make proto` also puts them; they are
never edited by hand and never committed. grpcio-tools is a build requirement (pyproject.toml), not a runtime one.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent
PROTO_ROOT = "proto"  # protoc's include root: proto/exchange/v1/x.proto becomes the module exchange.v1.x_pb2


def generate_stubs(proto_root: Path, out: Path) -> None:
    """Runs protoc (grpcio-tools) over every .proto under `proto_root`, writing modules, stubs and .pyi to `out`."""
    from grpc_tools import protoc  # a build requirement: imported only when building

    protos = sorted(str(path.relative_to(proto_root)) for path in proto_root.rglob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {proto_root}: the source tree is incomplete")
    well_known = str(files("grpc_tools") / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    arguments = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={out}",
                 f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {protos}")


class BuildPyWithStubs(build_py):
    """build_py, then the stubs next to the built package, and the .proto files as package data."""

    def run(self) -> None:
        super().run()
        proto_root = SOURCE / PROTO_ROOT
        if self.editable_mode:  # the package is imported from the source tree: that is where the stubs go
            generate_stubs(proto_root, SOURCE)
            return
        build_lib = Path(self.build_lib)
        generate_stubs(proto_root, build_lib)
        shipped = build_lib / "exchange" / "proto"
        shutil.rmtree(shipped, ignore_errors=True)
        shutil.copytree(proto_root, shipped, ignore=shutil.ignore_patterns("*.py", "__pycache__"))


setup(cmdclass={"build_py": BuildPyWithStubs})
