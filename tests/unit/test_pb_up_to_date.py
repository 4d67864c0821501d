"""The checked-in ``pb/`` stubs must be exactly what ``proto/`` generates."""

from __future__ import annotations

import pathlib

from tools.regenerate_pb import PB_DIR, generate

_FIX = "pb/ is out of date with proto/: run `python tools/regenerate_pb.py`"


def _generated_files(root: pathlib.Path) -> dict[str, bytes]:
    # Importing pb/ leaves bytecode caches beside the stubs; they are not generated.
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_committed_pb_matches_fresh_generation(tmp_path: pathlib.Path) -> None:
    fresh_dir = tmp_path / "pb"
    generate(fresh_dir)

    committed = _generated_files(PB_DIR)
    fresh = _generated_files(fresh_dir)

    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    changed = sorted(name for name, data in fresh.items() if committed.get(name, data) != data)
    # (missing from pb/, in pb/ but not generated, differing content)
    assert (missing, extra, changed) == ([], [], []), _FIX
