"""notebooks/quickstart.ipynb runs top to bottom on a smoke run."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAR_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("JAXAR_CONFIG", str(ROOT / "experiments" / "pixelcnn_mnist.py:smoke"))
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "pixelcnn at step 6" in text and "bits/dim of the four test images" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
