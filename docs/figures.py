"""The results and benchmarks pages' tables and figures, made from the benchmarks' JSON.

  python docs/figures.py                 # docs/data/*.json -> docs/_generated/
  python docs/figures.py DATA_DIR OUT_DIR

docs/conf.py runs this at the start of every Sphinx build, so the pages always show what
the JSON files hold. Each `docs/data/NAME.json` is a benchmark's `--out` file: a "header"
(benchmarks/common.py's `run_header`: machine, UTC date, the command that wrote it,
versions, the 1-minute load average at start and end) and its figures. For each one this
writes `OUT_DIR/NAME.md`, a Markdown fragment that docs/results.md or docs/benchmarks.md
includes: its tables and figures (`OUT_DIR/NAME*.png`, matplotlib's Agg backend), each
followed by a caption naming the machine, the date and the command from the header; the
PNG files carry the same text in their picture (a footer) and in their "Description"
metadata. A JSON file without a renderer below is shown as a table of its figures. A
header lacking the machine, the date or the command is an error: a figure must say
where, when and how it was measured.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: no display, and the same output everywhere

from matplotlib import pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "data"
OUT = HERE / "_generated"
REQUIRED = ("machine", "date", "command")


# --- the header: where, when, how ------------------------------------------------------


def caption(header: dict) -> str:
    """One paragraph naming the machine, date, load, versions and command of a run.

    Raises ValueError when the header lacks the machine, the date or the command."""
    missing = [key for key in REQUIRED if not header.get(key)]
    if missing:
        raise ValueError(f"header: missing {', '.join(missing)}")
    m = header["machine"]
    avx = {True: "AVX-512", False: "no AVX-512"}.get(m.get("avx512"), "")
    memory = f"{m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else ""
    parts = [m.get("cpu"), f"{m['cores']} cores" if m.get("cores") else "", avx, memory,
             f"{m['backend']} backend" if m.get("backend") else ""]
    where = ", ".join(p for p in parts if p)
    v = header.get("versions", {})
    names = (("jax", "jax_version"), ("jaxlib", "jaxlib_version"), ("flax", "flax_version"),
             ("TensorFlow", "tf_version"), ("Python", "python_version"))
    versions = ", ".join(f"{name} {v[key]}" for name, key in names if v.get(key))
    load = ""
    if header.get("load_1min_start") is not None:
        load = f"; 1-minute load average {header['load_1min_start']:.1f} at the start"
        if header.get("load_1min_end") is not None:
            load += f", {header['load_1min_end']:.1f} at the end"
    return (f"Measured on {where}; {header['date']}"
            + (f"; {versions}" if versions else "") + load
            + f". Command: `{header['command']}`")


def plain(text: str) -> str:
    """The caption without Markdown's backquotes (for the text inside a picture)."""
    return text.replace("`", "")


# --- formatting ------------------------------------------------------------------------


def seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "n/a"
    if s < 1:
        return f"{s:.3f} s"
    if s < 100:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    whole = round(s)
    return f"{whole // 60} min {whole % 60} s"


def num(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"
    return str(x)


def table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str) -> str:
    return f"`{text}`"


class Page:
    """A generated fragment: tables and figures of one JSON file, each with its caption."""

    def __init__(self, name: str, header: dict, out: pathlib.Path):
        self.name, self.out, self.caption = name, out, caption(header)
        self.parts: list[str] = []
        self.figures: list[pathlib.Path] = []

    def table(self, columns, rows, note: str = "") -> None:
        self.parts.append(table(columns, rows) + "\n\n" + (note + " " if note else "")
                          + f"*{self.caption}*")

    def figure(self, fig, suffix: str, alt: str, note: str = "") -> None:
        """Saves `fig` with the caption as a footer and PNG metadata; adds it to the page."""
        path = self.out / f"{self.name}{suffix}.png"
        footer = textwrap.fill(plain(self.caption), 140)
        # Below everything drawn (axis labels, legends outside the axes), in inches.
        fig.canvas.draw()
        box = fig.get_tightbbox(fig.canvas.get_renderer())
        width, height = fig.get_size_inches()
        fig.text(box.x0 / width, (box.y0 - 0.1) / height, footer, fontsize=6, color="0.3",
                 va="top", ha="left")
        fig.savefig(path, dpi=110, bbox_inches="tight",
                    metadata={"Description": plain(self.caption)})
        plt.close(fig)
        self.figures.append(path)
        rel = f"{self.out.name}/{path.name}"
        self.parts.append(f"```{{figure}} {rel}\n:alt: {alt}\n:width: 100%\n\n"
                          + (note + " " if note else "") + f"{self.caption}\n```")

    def write(self) -> pathlib.Path:
        path = self.out / f"{self.name}.md"
        path.write_text("\n\n".join(self.parts) + "\n")
        return path


# --- renderers, one per benchmark --------------------------------------------------------


def train_results(page: Page, data: dict) -> None:
    runs = data["runs"]
    loads = all("load_1min" in r for r in runs)  # each run's own load, where recorded
    page.table(
        ["config", "levels", "batch", "steps", "wall time", *(["load"] if loads else []),
         "test bits/dim", "nats"],
        [[code(r["config"]), r["num_levels"], r["batch_size"], f"{r['steps']:,}",
          seconds(r["wall_s"]),
          *([" - ".join(f"{v:.1f}" for v in r["load_1min"])] if loads else []),
          f"{r['test_bpd']:.4f}", num(r.get("test_nats"), 4)] for r in runs],
        "The final evaluation on each run's whole test split (EMA parameters; nats per "
        "example) after a short run; the data are "
        + ", ".join(sorted({f"{r['data']} {'x'.join(map(str, r['shape']))}" for r in runs}))
        + "; the wall time is the whole `jaxar-train` command (start-up, "
        "compilation, evaluations, checkpoints, the final samples)"
        + ("; load: the 1-minute load average at its start and end." if loads else "."))
    groups = [("2 levels (binarized)", [r for r in runs if r["num_levels"] == 2]),
              ("256 levels", [r for r in runs if r["num_levels"] != 2])]
    groups = [(title, rs) for title, rs in groups if rs]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), squeeze=False)
    for ax, (title, rs) in zip(axes[0], groups, strict=True):
        for r in rs:
            steps, bpd = zip(*r["eval_curve"], strict=True)
            ax.plot(steps, bpd, marker="o", ms=3, label=short(r["config"]))
        data = ", ".join(sorted({r["data"] for r in rs}))
        ax.set(title=f"{data}, {title}", xlabel="step", ylabel="test bits/dim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    page.figure(fig, "_curves", "test bits/dim against training step, one line per config",
                "Test bits/dim (EMA parameters) at each evaluation of the runs above.")


def short(spec: str) -> str:
    """`experiments/x.py:variant` as `x:variant`."""
    return spec.removeprefix("experiments/").replace(".py", "")


def tick(spec: str) -> str:
    """A config's name on two lines, for an axis."""
    return short(spec).replace(":", "\n:")


def sampling(page: Page, data: dict) -> None:
    rows = data["configs"]
    extrapolated = [r for r in rows if r["naive_extrapolated"]]
    page.table(
        ["config", "cached", "naive", "speed-up", "fixed_point (passes / dims)",
         "= cached: naive, fixed_point", "off the full network: fixed_point, cached"],
        [[code(short(r["config"])) + f" {'x'.join(map(str, r['event_shape']))}",
          seconds(r["cached_s"]),
          seconds(r["naive_s"]) + ("\\*" if r["naive_extrapolated"] else ""),
          f"{r['speedup']:.0f}x",
          f"{seconds(r['fixed_point_s'])} ({r['fixed_point_passes']} / {r['dimensions']:,})",
          f"{num(r['naive_identical_to_cached'])}, "
          f"{num(r['fixed_point_identical_to_cached'])}",
          f"{r['unsolved_dims']['fixed_point']}, {r['unsolved_dims']['cached']}"]
         for r in rows],
        f"Seconds to draw one batch of {rows[0]['batch']} samples (random weights: speed "
        "does not depend on them, though the fixed-point passes do), compilation apart. "
        + (f"\\* Extrapolated linearly from the first "
           f"{', '.join(sorted({str(r['naive_timed_steps']) for r in extrapolated}))} "
           "steps, whose samples are the ones compared with cached's. "
           if extrapolated else "")
        + "The last column counts the dimensions that one pass of the full network "
        "changes (`jaxar.sampling.jitted_redraw`): 0 means exactly the full network's "
        "ancestral sample, so where fixed_point and cached differ it says which one a "
        "float rounding flip of a draw on a bin boundary moved (see [sampling "
        "methods](guides/sampling.md)).")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    methods = [("cached", "cached_s"), ("fixed_point", "fixed_point_s"), ("naive", "naive_s")]
    width = 0.8 / len(methods)
    for i, (label, key) in enumerate(methods):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] for r in rows], width,
               label=label + (" (extrapolated)" if label == "naive" and
                              any(r["naive_extrapolated"] for r in rows) else ""))
    ax.set_xticks([j + width for j in range(len(rows))], [tick(r["config"]) for r in rows],
                  fontsize=7)
    ax.set(yscale="log", ylabel=f"seconds per batch of {rows[0]['batch']}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    page.figure(fig, "", "seconds per batch of samples by method, log scale",
                "Seconds per batch of samples, log scale.")


def sampling_sequences(page: Page, data: dict) -> None:
    page.table(
        ["model", "dimensions", "batch", "cached", "naive", "speed-up", "identical samples"],
        [[r["label"], f"{r['dimensions']:,}", r["batch"], seconds(r["cached_s"]),
          seconds(r["naive_s"]) + (f" (from {r['naive_timed_steps']:,} steps)"
                                   if r["naive_extrapolated"] else ""),
          f"{r['speedup']:.1f}x",
          "not compared (extrapolated)" if r["naive_identical_to_cached"] is None
          else num(r["naive_identical_to_cached"])] for r in data["runs"]],
        "WaveNet: 256-level categorical, 2 stacks of dilations 1..512, 32 residual / 64 "
        "skip / 128 head channels; Transformer: 2 pre-LN blocks, width 64, 4 heads, "
        "Bernoulli. Random weights.")


IMPL_ORDER = ("auto", "im2col", "split", "plain")


def train_throughput(page: Page, data: dict) -> None:
    rows = data["configs"]
    auto = data.get("auto", {})
    page.table(
        ["config", "batch", *[f"`{i}` images/s" for i in IMPL_ORDER], "auto / plain",
         "largest difference to plain"],
        [[code(short(r["config"])), r["batch"],
          *[num(r["images_per_s"].get(i)) if i in r["images_per_s"] else "-"
            for i in IMPL_ORDER],
          f"{r['images_per_s']['auto'] / r['images_per_s']['plain']:.2f}x",
          f"{r['max_relative_difference_to_plain']:.1e}"] for r in rows],
        f"Train steps per second times the batch (median of {data['rounds']} rounds, every "
        f"path in turn in one process). `auto` resolved to `{auto.get('masked')}` for "
        f"masked and `{auto.get('shifted')}` for shifted convolutions on this machine. The "
        "last column is the largest relative L2 difference of the loss and gradients from "
        "the plain path's.")
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    width = 0.8 / len(IMPL_ORDER)
    for i, impl in enumerate(IMPL_ORDER):
        xs = [j + i * width for j, r in enumerate(rows) if impl in r["images_per_s"]]
        ys = [r["images_per_s"][impl] / r["images_per_s"]["plain"] for r in rows
              if impl in r["images_per_s"]]
        ax.bar(xs, ys, width, label=impl)
    ax.axhline(1.0, color="0.4", lw=0.8)
    ax.set_xticks([j + 1.5 * width for j in range(len(rows))],
                  [tick(r["config"]) for r in rows], fontsize=7)
    ax.set(ylabel="train-step speed / plain")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, title="model.conv_impl", title_fontsize=7)
    page.figure(fig, "", "train-step speed of each conv_impl relative to plain",
                "Train-step speed of each `model.conv_impl`, relative to `plain`.")


def profile_step(page: Page, data: dict) -> None:
    rows = data["configs"]
    groups = sorted({g for r in rows for g in r["groups"]},
                    key=lambda g: -max(r["groups"].get(g, 0) / r["op_s"] for r in rows))
    page.table(
        ["group", *[f"{code(short(r['config']))} batch {r['batch']}" for r in rows]],
        [["step (wall)", *[seconds(r["step_s"]) for r in rows]],
         ["ops (all threads)", *[seconds(r["op_s"]) for r in rows]],
         ["trace + lower / compile",
          *[f"{seconds(r['lower_s'])} / {seconds(r['compile_s'])}" for r in rows]],
         ["GFLOP per step (XLA)", *[f"{r['flops'] / 1e9:.1f}" for r in rows]]]
        + [[g, *[f"{100 * r['groups'].get(g, 0) / r['op_s']:.1f}%" for r in rows]]
           for g in groups],
        f"Shares of the op time of the trainer's jitted step, summed over XLA:CPU's "
        f"threads, from a `jax.profiler` trace of {data['steps']} steps; each op is counted "
        "by its kind (convolution, matmul, gather) and direction, else by the jaxar or "
        "optax function that emitted it.")
    # Groups under 2% of every step's op time share one bar segment, so that each colour
    # names one group.
    big = [g for g in groups if max(r["groups"].get(g, 0) / r["op_s"] for r in rows) >= 0.02]
    fig, ax = plt.subplots(figsize=(6.0, 0.9 + 0.45 * len(rows)))
    cmap = plt.get_cmap("tab20")
    for j, r in enumerate(rows):
        shares = [(g, r["groups"].get(g, 0)) for g in big]
        shares.append(("other groups (each < 2%)",
                       sum(v for g, v in r["groups"].items() if g not in big)))
        left = 0.0
        for k, (g, value) in enumerate(shares):
            share = 100 * value / r["op_s"]
            ax.barh(j, share, left=left, color=cmap(k % 20), label=g if j == 0 else None)
            left += share
    ax.set_yticks(range(len(rows)), [short(r["config"]) for r in rows], fontsize=7)
    ax.set(xlabel="% of the step's op time", xlim=(0, 100))
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    page.figure(fig, "", "shares of a train step's op time by group",
                "Where a train step's op time goes.")


def run_name(r: dict) -> str:
    """A trained run: its model, data, levels and steps (the workdir's own path is in the
    command of the caption)."""
    return (f"{r['model_name']}, {r['data']} at {r['num_levels']} levels, "
            f"{r['step']:,} steps")


def lossless(page: Page, data: dict) -> None:
    runs = data["runs"]
    page.table(
        ["trained run", "images", "`.jaxar` file", "model", "PNG", "WebP", "lzma", "compress",
         "decompress", "cached sampler"],
        [[run_name(r), r["num"], f"{r['file']:.4f}", f"{r['model']:.4f}", f"{r['png']:.4f}",
          "n/a" if r["webp"] is None else f"{r['webp']:.4f}", f"{r['lzma']:.4f}",
          num(r["compress"]), num(r["decompress"]), num(r["sample"])] for r in runs],
        "Bits per dimension of each coder on the run's first test images (the `.jaxar` "
        "file includes its header), and speeds in images/s at the batch given in the "
        "command (best of its rounds; the cached sampler draws one batch).")
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    coders = [(".jaxar file", "file"), ("model", "model"), ("PNG", "png"), ("WebP", "webp"),
              ("lzma", "lzma")]
    width = 0.8 / len(coders)
    for i, (label, key) in enumerate(coders):
        xs = [j + i * width for j, r in enumerate(runs) if r[key] is not None]
        ax.bar(xs, [r[key] for r in runs if r[key] is not None], width, label=label)
    ax.set_xticks([j + 2 * width for j in range(len(runs))],
                  [", ".join(run_name(r).split(", ")[:2]) for r in runs], fontsize=7)
    ax.set(ylabel="bits/dim")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    page.figure(fig, "", "bits per dimension of the model coder against PNG, WebP and lzma",
                "Bits per dimension by coder.")


def released_eval(page: Page, data: dict) -> None:
    configs = data["configs"]
    sampled = any("cached_sampling" in r for r in configs.values())
    rows = []
    for spec, r in configs.items():
        lp, s = r["log_prob"], r.get("cached_sampling")
        row = [code(short(spec)), f"{r['parameters']:,}", lp["batch"],
               seconds(lp["median_s_per_batch"]), num(lp["images_per_s"]),
               seconds(lp["s_per_1000_images"]), seconds(lp["first_call_s"])]
        if sampled:
            row += ["-" if s is None else f"{s['num_samples']} in {seconds(s['seconds'])}",
                    "-" if s is None else seconds(s["compile_s"])]
        rows.append(row)
    page.table(["config", "parameters", "batch", "log_prob per batch", "images/s",
                "per 1,000 images", "first call (compiles)"]
               + (["cached samples", "sampler compile"] if sampled else []), rows,
               "The released architectures (random weights in the released layout: speed "
               "does not depend on the values), jitted `jaxar.log_prob` (median of the "
               "timed calls)" + (" and `jaxar.sample(method=\"cached\")`." if sampled
                                 else "; sampling was not timed in this run."))


def tf_compare(page: Page, data: dict) -> None:
    """jaxar's evaluation against the original TensorFlow code's, one batch in turn."""
    models = data["models"]
    variants = sorted({v for m in models.values() for v in m["variants"]})
    page.table(
        ["model", "parameters", "TensorFlow s/batch",
         *[f"`{v}` s/batch (speed / TF)" for v in variants], "NLL max relative difference",
         "load average"],
        [[name, f"{m['num_params']:,}", seconds(m["tf_s_per_batch"]),
          *[f"{seconds(m['variants'][v]['s_per_batch'])} ({m['variants'][v]['ratio']:.2f}x)"
            if v in m["variants"] else "-" for v in variants],
          ", ".join(f"{num(x, 2)}" for x in m["nll_max_rel_diff"].values()),
          f"{m['loadavg']['min']:.1f}-{m['loadavg']['max']:.1f}"] for name, m in models.items()],
        f"Seconds per batch of {data['batch']} images of the `paper`-size network's "
        "log-likelihood (the released architectures, the same weights in both: the "
        "NLL column compares their per-image values), "
        f"median of {', '.join(sorted({str(m['rounds']) for m in models.values()}))} rounds "
        "taken in turn after a warm-up; speed / TF above 1 means jaxar is faster. "
        + ", ".join(f"`{name}`: `{v['spec']}`" for name, v in
                    next(iter(models.values()))["variants"].items())
        + f" (XLA flags after `::`). TensorFlow threads: {data['tf_threads']}.")
    rows = []
    for name, m in models.items():
        for framework, prof in m.get("profile_groups", {}).items():
            total = sum(prof["op_seconds"].values())
            rows.append([name, framework, seconds(prof.get("wall_s", prof.get("step_s"))),
                         "; ".join(f"{g} {100 * v / total:.0f}%" for g, v in sorted(
                             prof["op_seconds"].items(), key=lambda kv: -kv[1]))])
    sources = sorted({f"`{p['source']}` on {p['date']}" for m in models.values()
                      for f, p in m.get("profile_groups", {}).items() if "source" in p
                      and "date" in p and f != "tf"})
    if rows:
        page.table(["model", "framework", "profiled batch (wall)", "share of the op time"],
                   rows, "Op time of one profiled batch by kind of op (TensorFlow: its step "
                   "stats per kernel, in the run of the caption; jaxar: "
                   "benchmarks/profile_step.py's groups"
                   + (f", from a run of its own: {'; '.join(sources)}" if sources else "")
                   + ").")


def flat(prefix: str, value, out: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list) and len(value) <= 8 and not any(
            isinstance(v, dict | list) for v in value):
        out.append((prefix, ", ".join(num(v) for v in value)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            flat(f"{prefix}[{i}]", v, out)
    else:
        out.append((prefix, num(value)))


def generic(page: Page, data: dict) -> None:
    """Any other benchmark's JSON: one row per figure."""
    rows: list = []
    flat("", data, rows)
    page.table(["figure", "value"], [[code(k), v] for k, v in rows])


RENDERERS = {"train_results": train_results, "sampling": sampling,
             "sampling_sequences": sampling_sequences, "train_throughput": train_throughput,
             "profile_step": profile_step, "lossless": lossless,
             "released_eval": released_eval, "tf_compare": tf_compare}


def render(path: pathlib.Path, out: pathlib.Path) -> Page:
    """Writes `out/<name>.md` (and its figures) for one JSON file; returns the page."""
    data = json.loads(path.read_text())
    header = data.pop("header", None)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: no header (write it with benchmarks/common.py's write_json)")
    try:
        page = Page(path.stem, header, out)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    RENDERERS.get(path.stem, generic)(page, data)
    page.write()
    return page


def build(data_dir: pathlib.Path = DATA, out: pathlib.Path = OUT) -> list[Page]:
    """Renders every `data_dir/*.json` into `out` (created; its old files removed)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.md"), *out.glob("*.png")]:
        old.unlink()
    return [render(path, out) for path in sorted(pathlib.Path(data_dir).glob("*.json"))]


if __name__ == "__main__":
    args = [pathlib.Path(a) for a in sys.argv[1:]]
    for p in build(*args):
        print(f"{p.name}: {len(p.parts)} tables and figures")
