"""Regenerate the Python gRPC stubs in ``pb/`` from the ``.proto`` files in ``proto/``.

Run from anywhere with ``python tools/regenerate_pb.py``. The output is checked in;
``tests/unit/test_pb_up_to_date.py`` fails when it no longer matches ``proto/``.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
PB_DIR = REPO_ROOT / "pb"

# protoc writes imports relative to the include root (`from mqc3_cloud.x.v1 import
# y_pb2`, and alike for this project's own `mqc3_scheduler`); the stubs live in the `pb`
# package, so those imports gain a `pb.` prefix.
_ABSOLUTE_IMPORT = re.compile(r"^(\s*)from (mqc3_cloud|mqc3_scheduler)\.", re.MULTILINE)
_REWRITTEN_SUFFIXES = (".py", ".pyi")


def proto_files() -> list[pathlib.Path]:
    """Return every ``.proto`` under ``proto/``, relative to the repository root."""
    return sorted(p.relative_to(REPO_ROOT) for p in PROTO_DIR.rglob("*.proto"))


def protoc_command(out_dir: pathlib.Path) -> list[str]:
    """Return the protoc invocation that writes stubs for every proto into ``out_dir``."""
    # `-I proto` keeps descriptor names such as `mqc3_cloud/scheduler/v1/job.proto`.
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        "proto",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(p.as_posix() for p in proto_files()),
    ]


def _rewrite_imports(root: pathlib.Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.suffix in _REWRITTEN_SUFFIXES:
            text = path.read_text(encoding="utf-8")
            path.write_text(_ABSOLUTE_IMPORT.sub(r"\1from pb.\2.", text), encoding="utf-8")


def _add_package_markers(root: pathlib.Path) -> None:
    for directory in [root, *sorted(d for d in root.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()


def generate(out_dir: pathlib.Path) -> None:
    """Replace ``out_dir`` with freshly generated stubs importable as ``pb.mqc3_cloud...``.

    The stubs are built in a scratch directory first, so a protoc failure leaves
    ``out_dir`` as it was.
    """
    with tempfile.TemporaryDirectory() as scratch:
        staged = pathlib.Path(scratch) / "pb"
        staged.mkdir()
        subprocess.run(protoc_command(staged), cwd=REPO_ROOT, check=True)
        _rewrite_imports(staged)
        _add_package_markers(staged)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(staged, out_dir)


def main() -> None:
    """Regenerate the checked-in ``pb/`` package."""
    generate(PB_DIR)
    print(f"regenerated {PB_DIR.relative_to(REPO_ROOT)}/ from {len(proto_files())} proto files")


if __name__ == "__main__":
    main()
