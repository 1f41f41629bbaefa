"""What ``import tensorbayes`` imports, and its top-level names: tb.plots is imported on first
use (PEP 562), so matplotlib is not imported with the package; tb.tensorize is tb.models.tensorize."""

import os
import subprocess
import sys

import pytest

import tensorbayes as tb

CHECK = """
import sys
import tensorbayes as tb
assert "matplotlib" not in sys.modules, sorted(m for m in sys.modules if m.startswith("matplotlib"))
assert "tensorbayes.plots" not in sys.modules
assert "plots" in dir(tb) and "plots" in tb.__all__
from tensorbayes.models import TensorCompletion
from tensorbayes.guides import MeanField
model = TensorCompletion((4, 5, 6), format="tt", max_rank=3)
axes = tb.plots.rank_shrinkage(model, MeanField(model, seed=0))
assert "matplotlib" in sys.modules and tb.plots is sys.modules["tensorbayes.plots"]
import matplotlib.axes
assert len(axes) == 1 and isinstance(axes[0], matplotlib.axes.Axes) and axes[0].has_data()
print("ok")
"""


def test_import_tensorbayes_does_not_import_matplotlib_and_plots_loads_on_use():
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_tensorize_at_the_top_level_and_unknown_names():
    assert tb.tensorize is tb.models.tensorize and "tensorize" in tb.__all__
    with pytest.raises(AttributeError, match="has no attribute 'plot'"):
        tb.plot  # noqa: B018
    from tensorbayes import plots  # the ordinary import still works

    assert tb.plots is plots
