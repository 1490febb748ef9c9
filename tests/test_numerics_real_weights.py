"""Real weights (slow): rotated SmolLM2 / MiniLM linears quantize like N(0,1) under RMS-scaled Gaussian grids.

The full table is `python -m qcomp.numerics.report_rotated_mse`; this checks a few weights and configs.
Skipped when the prepared models are absent; deselect with -m "not slow".
"""
import pytest

from qcomp.numerics.report_rotated_mse import KINDS, measure, pick_weights

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["smollm", "minilm"])
def test_rotated_real_weights_match_grid_mse(model, request):
    path = request.getfixturevalue("smollm2_dir" if model == "smollm" else "minilm_dir")
    kinds = [KINDS[model][0], KINDS[model][-1]]  # an attention input and the MLP output projection
    for name, w in pick_weights(path, kinds).items():
        row = measure(w[:96])
        for cfg, cell in row["rotated"].items():
            assert abs(cell["ratio"] - 1) < 0.10, (name, cfg, cell)
        # rotation must help: without it the heavy-tailed rows are worse than the Gaussian prediction
        assert row["plain"]["b4p1"]["ratio"] > row["rotated"]["b4p1"]["ratio"]
