"""A field the engine cannot serve stops it at start with the artifact's error, never at the
first request."""

from __future__ import annotations

import pytest
from conftest import run_engine, save_random_fields

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("problem", ["other hidden size", "missing file", "not a field file"])
def test_bad_field_stops_the_engine_at_start(tmp_path, default_model_dir, problem):
    if problem == "other hidden size":
        path = save_random_fields(tmp_path, 30, 64, {"small": (0, range(12, 22), (16,))})["small"]
        needle = "hidden"
    elif problem == "missing file":
        path, needle = str(tmp_path / "absent" / "field.safetensors"), "absent"
    else:
        path = tmp_path / "junk.safetensors"
        path.write_bytes(b"\x00" * 64)
        path, needle = str(path), "junk.safetensors"
    engine = {"model": str(default_model_dir), "dtype": "float32", "enforce_eager": True,
              "max_model_len": 256, "additional_config": {"svf": {"fields": {"x": path}}}}
    out = run_engine(tmp_path, engine, [[{"prompt_token_ids": [1, 2, 3], "params": {"max_tokens": 2}}]],
                     timeout=300)
    error = out.get("start_error", "")
    assert error, f"the engine started with a bad field ({problem}); log:\n{out['log'][-2000:]}"
    assert error.startswith("ArtifactError") and needle in error, error
