"""docs/figures.py: the benchmarks' JSON becomes tables and figures whose captions name the
machine, the date and the command; every JSON under docs/data has that header and is shown
on the results or benchmarks page; benchmarks/common.py writes the header."""

import copy
import importlib.util
import json
import pathlib
import re
import sys

import jax
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402

_spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "docs" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

HEADER = {
    "command": "launch/env.sh python benchmarks/train_results.py --out x.json",
    "date": "2031-02-03T04:05:06+00:00",
    "machine": {"cpu": "Test CPU @ 9.99GHz", "cores": 3, "avx512": False,
                "memory_bytes": 8 * 2**30, "backend": "cpu", "devices": "1 x cpu"},
    "versions": {"jax_version": "0.1.2", "python_version": "3.99.0"},
    "load_1min_start": 1.25, "load_1min_end": 2.5,
}
RUN = {"config": "experiments/made_mnist.py", "model": "made", "data": "mnist",
       "shape": [28, 28, 1], "num_levels": 2, "batch_size": 64, "steps": 300, "wall_s": 125.0,
       "test_bpd": 0.23456, "test_nats": 127.5, "eval_curve": [[150, 0.3], [300, 0.23456]],
       "train_curve": [[50, 0.5], [300, 0.24]]}


def write(folder: pathlib.Path, name: str, report: dict) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(report))
    return path


def test_a_json_becomes_a_table_and_a_figure_captioned_with_machine_date_command(tmp_path):
    pp = {**RUN, "config": "experiments/pixelcnn_pp_cifar10.py:mnist", "num_levels": 256,
          "test_bpd": 1.5, "eval_curve": [[100, 1.9], [200, 1.5]]}
    write(tmp_path / "data", "train_results", {"header": HEADER, "runs": [RUN, pp]})
    (page,) = figures.build(tmp_path / "data", tmp_path / "out")
    text = (tmp_path / "out" / "train_results.md").read_text()
    wanted = ["Test CPU @ 9.99GHz, 3 cores, no AVX-512, 8 GiB, cpu backend",
              "2031-02-03T04:05:06+00:00", HEADER["command"], "jax 0.1.2", "Python 3.99.0",
              "load average 1.2 at the start, 2.5 at the end"]
    for piece in wanted:
        assert piece in text, piece
    row = re.search(r"^\| `experiments/made_mnist.py` \|.*$", text, re.M).group(0)
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "`experiments/made_mnist.py`", "2", "64", "300", "2 min 5 s", "0.2346", "127.5"]
    # Each table and the figure carry the caption.
    assert text.count(HEADER["command"]) == 2
    (png,) = page.figures
    assert f"_generated/{png.name}" not in text and f"out/{png.name}" in text
    with Image.open(png) as image:
        assert image.size[0] > 500 and image.size[1] > 300
        description = image.text["Description"]
    for piece in wanted:
        assert piece in description, piece


def test_each_runs_load_is_a_column_where_recorded(tmp_path):
    write(tmp_path / "data", "train_results",
          {"header": HEADER, "runs": [{**RUN, "load_1min": [3.04, 7.96]}]})
    figures.build(tmp_path / "data", tmp_path / "out")
    text = (tmp_path / "out" / "train_results.md").read_text()
    assert "| wall time | load | test bits/dim |" in text
    assert "| 2 min 5 s | 3.0 - 8.0 | 0.2346 |" in text


@pytest.mark.parametrize("value, text", [(0.0123, "0.012 s"), (5.25, "5.25 s"), (42.26, "42.3 s"),
                                         (101.4, "101 s"), (899.7, "15 min 0 s"),
                                         (3951.3, "65 min 51 s")])
def test_durations_read_as_a_person_writes_them(value, text):
    assert figures.seconds(value) == text


@pytest.mark.parametrize("key", figures.REQUIRED)
def test_a_header_lacking_machine_date_or_command_is_refused(tmp_path, key):
    header = copy.deepcopy(HEADER)
    del header[key]
    write(tmp_path / "data", "train_results", {"header": header, "runs": [RUN]})
    with pytest.raises(ValueError, match=f"train_results.json: header: missing {key}"):
        figures.build(tmp_path / "data", tmp_path / "out")


def test_a_json_without_header_is_refused(tmp_path):
    write(tmp_path / "data", "train_results", {"runs": [RUN]})
    with pytest.raises(ValueError, match="no header"):
        figures.build(tmp_path / "data", tmp_path / "out")


def test_a_harness_report_names_its_tensorflow_and_needs_the_header_key(tmp_path):
    header = {"machine": {"cpu": "Some CPU", "cores": 2}, "date": "2031-01-01T00:00:00+00:00",
              "command": "python driver.py --rounds 5", "versions": {"tf_version": "2.99"}}
    write(tmp_path / "data", "harness", {"header": header, "speed": 1.5})
    figures.build(tmp_path / "data", tmp_path / "out")
    text = (tmp_path / "out" / "harness.md").read_text()
    assert "Measured on Some CPU, 2 cores; 2031-01-01T00:00:00+00:00; TensorFlow 2.99. " \
           "Command: `python driver.py --rounds 5`" in text
    assert "| `speed` | 1.5 |" in text
    # The header's fields at the top level are no header.
    write(tmp_path / "data", "harness", {**header, "speed": 1.5})
    with pytest.raises(ValueError, match="harness.json: no header"):
        figures.build(tmp_path / "data", tmp_path / "out")


def test_a_json_of_another_benchmark_is_a_table_of_its_figures(tmp_path):
    write(tmp_path / "data", "new_bench", {"header": HEADER, "speed": {"a": 1.5, "b": [1, 2]}})
    figures.build(tmp_path / "data", tmp_path / "out")
    text = (tmp_path / "out" / "new_bench.md").read_text()
    assert "| `speed.a` | 1.5 |" in text and "| `speed.b` | 1, 2 |" in text
    assert HEADER["command"] in text


DATA = sorted((ROOT / "docs" / "data").glob("*.json"))


def test_the_docs_have_benchmark_data():
    assert {"train_results", "sampling", "train_throughput"} <= {p.stem for p in DATA}


@pytest.mark.parametrize("path", DATA, ids=[p.stem for p in DATA])
def test_every_docs_data_json_has_the_header_and_is_on_a_page(path):
    header = json.loads(path.read_text())["header"]
    text = figures.caption(header)
    assert header["machine"]["cpu"] in text
    assert header["date"] in text and header["command"] in text
    pages = "".join((ROOT / "docs" / page).read_text() for page in ("results.md",
                                                                     "benchmarks.md"))
    assert f"_generated/{path.stem}.md" in pages, f"{path.name} is on no page"


def test_benchmarks_write_json_puts_the_run_header_first(tmp_path):
    out = tmp_path / "x.json"
    header = common.run_header(str(ROOT / "benchmarks" / "sampling.py"),
                               ["--batch", "2", "--out", "x y.json"], out)
    common.write_json(out, {"figure": 1.5}, header)
    report = json.loads(out.read_text())
    assert list(report) == ["header", "figure"] and report["figure"] == 1.5
    got = report["header"]
    assert got["command"] == ("launch/env.sh python benchmarks/sampling.py --batch 2 "
                              "--out 'x y.json'")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", got["date"])
    assert got["machine"]["cores"] >= 1 and got["machine"]["backend"] == jax.default_backend()
    assert got["load_1min_end"] >= 0 and got["versions"]["jax_version"]
    figures.caption(got)  # complete
    with pytest.raises(ValueError, match="--out"):
        common.run_header("x.py", [], tmp_path / "missing" / "x.json")
