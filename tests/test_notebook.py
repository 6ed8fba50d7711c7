"""docs/notebook.ipynb, run as a user runs it (nbclient, ipykernel's python3 kernel), once per
backend: the kernel's backend (KERAS_BACKEND) trains in the kernel, the other in a new process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Appended for the test only: what the kernel imported, and the loaded model on every digit.
CHECK = """
import json, sys
all_x = (digits.images / 16.0).astype("float32")[..., None]
hits = model.predict(all_x, verbose=0).argmax(-1) == digits.target
print(json.dumps({"torch": "torch" in sys.modules, "tensorflow": "tensorflow" in sys.modules,
                  "accuracy": float(hits.mean()), "scores": scores}))
"""


def _text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.parametrize("backend,keras_backend", [("torch", "torch"), ("tf", "tensorflow")])
def test_the_notebook_runs_on_each_backend(
    backend: str, keras_backend: str, tmp_path: Path
) -> None:
    notebook = nbformat.read(REPO / "docs" / "notebook.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(cell.outputs or cell.execution_count for cell in code)  # committed cleared
    notebook.cells.append(new_code_cell(CHECK))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "KERAS_BACKEND": keras_backend, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    where = {"metadata": {"path": str(tmp_path)}}  # the kernel's working directory
    client = NotebookClient(notebook, kernel_name="python3", timeout=300, resources=where)
    client.execute(env=env)  # raises CellExecutionError, with the cell, if a cell fails

    other = "tf" if backend == "torch" else "torch"
    checked = json.loads(_text(notebook.cells[-1]))
    # The kernel trained on its backend and imported only that framework: the other run was
    # a process of its own, whose output the notebook shows.
    assert (checked["torch"], checked["tensorflow"]) == (backend == "torch", backend == "tf")
    assert f"dualtrain cnn on {other}: completed" in "".join(_text(c) for c in code)
    summaries = {}
    for name in (backend, other):
        (summary_file,) = (tmp_path / "outputs" / "cnn" / name).glob("*/summary.json")
        summaries[name] = json.loads(summary_file.read_text())
        # 2 epochs of 10 batches (trainer.limit_train_batches=10)
        assert (summaries[name]["status"], summaries[name]["steps"]) == ("completed", 20)
    table = "".join(o.get("data", {}).get("text/markdown", "") for c in code for o in c.outputs)
    for name in (backend, other):
        assert f"| backend={name} | {name} | cnn | completed | 20 |" in table
    # The other backend's checkpoint, evaluated in this kernel: its run's final val metrics.
    scores, final = checked["scores"], summaries[other]["final"]["val"]
    assert (scores["backend"], scores["checkpoint_backend"]) == (backend, other)
    # The same weights on the val split (360 digits): a logit tie may flip one of them.
    assert abs(scores["metrics"]["accuracy"] - final["accuracy"]) <= 1 / 360
    # float32 sums of the same values in another order: parity's tolerance (docs/parity.md)
    assert scores["metrics"]["loss"] == pytest.approx(final["loss"], rel=1e-5)
    # load_model's weights are the trained ones: chance is 0.1, and 20 steps reached 0.8-0.85
    # val accuracy on both backends (seed 0)
    assert checked["accuracy"] > 0.5
