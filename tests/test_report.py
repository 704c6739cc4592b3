"""The report from a results JSON: learning rates chosen on validation, the table, both figures (no training)."""

from __future__ import annotations

import itertools
import json

import pytest

from t5peft.experiments.figures import METHOD_COLORS, build_figure, build_memory_figure, method_styles
from t5peft.experiments.layout import FIGURE_FILE, MEMORY_FIGURE_FILE, TABLE_FILE
from t5peft.experiments.report import render_report
from t5peft.experiments.results import (
    SCHEMA_VERSION,
    ReportError,
    choose_learning_rates,
    counted_memory,
    summarize,
)
from t5peft.experiments.table import markdown_table
from t5peft.methods import method_names

pytest.importorskip("matplotlib")

# trainable parameter counts of the smoke models (lora and lora+prompt sit almost on the same point)
TRAINABLE = {
    "full": 2_286_592,
    "lora": 12_288,
    "adalora": 67_968,
    "adapter": 2_320,
    "prompt": 512,
    "ptuning2": 6_144,
    "lora+prompt": 13_568,
    "ia3": 1_792,
}
BASE = 2_286_592


def device_share(runs_at_once: int, threads: int | None) -> dict:
    """A run's device-share record as ``run_record`` writes it, for one stretch."""
    stretch = {
        "started_at": "2026-11-26T00:00:00+00:00",
        "ended_at": "2026-11-26T00:01:00+00:00",
        "status": "finished",
        "device": "cpu",
        "jobs": runs_at_once,
        "runs_at_once": runs_at_once,
        "threads": threads,
        "cores": 2,
    }
    return {"runs_at_once": runs_at_once, "threads": [threads], "stretches": [stretch]}


def fake_run(
    method: str,
    seed: int,
    lr: float,
    val: float,
    test: float,
    val_loss: float = 0.7,
    flat: bool = True,
    share: dict | None = None,
):
    """A run record as ``run_record`` writes it; ``flat``: the validation curve sits at ``val`` throughout;
    ``share``: its device-share record (None: a file from before the record, which has no such key)."""
    trainable = TRAINABLE[method]
    added = 0 if method == "full" else trainable
    curve = [
        {
            "step": 4 * k,
            "epoch": k / 4,
            "train_loss": 10.9 - 0.01 * k - 0.001 * seed,
            "val_loss": val_loss,
            "val_accuracy": val if flat else val - 0.02 * (4 - k),
        }
        for k in range(1, 5)
    ]
    record = {
        "method": method,
        "seed": seed,
        "weights": "random-init",
        "learning_rate": lr,
        "test_accuracy": test,
        "test_loss": 0.69,
        "test_n": 64,
        "validation_accuracy": val,
        "validation_loss": val_loss,
        "curve": curve,
        "parameters": {
            "trainable": trainable,
            "base": BASE,
            "total": BASE + added,
            "trainable_percent": 100 * trainable / BASE,
        },
        "memory": {"peak_cpu_rss_bytes": 660 * 2**20 + seed},
        "training": {"seconds": 1.0 + 0.1 * seed, "examples_per_s": 300.0, "tokens_per_s": 20000.0},
        "evaluation_seconds": 0.2,
        "adapter_file_bytes": 4 * trainable + 100,
        "method_report": {},
        "environment": {"device_name": "CPU: test", "date": "2026-11-26T00:00:00+00:00", "git_commit": "abc"},
    }
    if share is not None:
        record["device_share"] = share
    return record


def results_of(runs, methods_plan, seeds=(0, 1)):
    experiment = {"name": "t", "seeds": list(seeds), "methods": methods_plan, "train": {}}
    sweeps = choose_learning_rates(runs, experiment)
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "weights": "random-init",
        "environment": runs[0]["environment"],
        "runs": runs,
        "not_finished": [],
        "sweeps": sweeps,
        "summary": summarize(runs, sweeps),
    }


def test_learning_rate_is_chosen_on_validation_never_on_test():
    # 1e-3 is better on validation, 3e-3 on test: the choice must follow validation.
    runs = [
        fake_run("lora", 0, 1e-3, val=0.80, test=0.60),
        fake_run("lora", 1, 1e-3, val=0.78, test=0.62),
        fake_run("lora", 0, 3e-3, val=0.70, test=0.90),
        fake_run("lora", 1, 3e-3, val=0.72, test=0.92),
        fake_run("ia3", 0, 3e-3, val=0.6, test=0.6),
        fake_run("ia3", 1, 3e-3, val=0.6, test=0.6),
    ]
    results = results_of(runs, [{"name": "lora", "lr": [1e-3, 3e-3]}, {"name": "ia3", "lr": None}])
    sweep = results["sweeps"]["lora"]
    assert sweep["chosen_learning_rate"] == 1e-3 and sweep["complete"]
    assert [v["learning_rate"] for v in sweep["values"]] == [1e-3, 3e-3]
    assert [v["chosen"] for v in sweep["values"]] == [True, False]
    assert sweep["values"][1]["test_accuracy"]["mean"] == pytest.approx(0.91)  # every value's result is kept
    assert "ia3" not in results["sweeps"]
    lora = results["summary"]["lora"]
    assert lora["learning_rate"] == 1e-3 and lora["learning_rate_chosen_on_validation"]
    assert lora["test_accuracy"]["mean"] == pytest.approx(0.61) and lora["seeds"] == [0, 1]
    assert not results["summary"]["ia3"]["learning_rate_chosen_on_validation"]

    table = markdown_table(results)
    assert "| lora | 0.001* | 61.00 ± 1.41 |" in table
    assert "## Learning rates chosen on validation" in table and "never on test" in table
    assert "| lora | 0.003 | 71.00 ± 1.41 |" in table  # the value not chosen, with its numbers


def test_ties_on_validation_accuracy_go_to_the_lower_validation_loss_and_incomplete_sweeps_say_so():
    runs = [
        fake_run("lora", 0, 1e-3, val=0.75, test=0.5, val_loss=0.60),
        fake_run("lora", 0, 3e-3, val=0.75, test=0.9, val_loss=0.50),
    ]
    results = results_of(runs, [{"name": "lora", "lr": [1e-3, 3e-3, 1e-2]}], seeds=(0,))
    assert results["sweeps"]["lora"]["chosen_learning_rate"] == 3e-3
    assert results["sweeps"]["lora"]["complete"] is False
    assert "Sweep not complete yet" in markdown_table(results)


def test_counted_memory_separates_methods():
    full = counted_memory({"trainable": 1000, "total": 1000})
    lora = counted_memory({"trainable": 10, "total": 1010})
    assert full["training_state"] == 16 * 1000 and full["total"] == 16 * 1000
    assert lora["training_state"] == 160 and lora["weights"] == 4040 and lora["total"] == 4040 + 120


def _eight_methods(seeds=(0, 1)):
    # every method at chance: equal validation curves, near-equal test accuracies (the smoke run's case)
    runs = []
    for i, method in enumerate(TRAINABLE):
        for seed in seeds:
            runs.append(fake_run(method, seed, 1e-3, val=0.5, test=0.5 + 0.001 * (i % 2)))
    return results_of(runs, [{"name": m, "lr": 1e-3} for m in TRAINABLE], seeds)


def test_every_registered_method_has_its_own_colour_and_marker():
    styles = method_styles(method_names())
    assert len({s["color"] for s in styles.values()}) == len(styles)
    assert len({s["marker"] for s in styles.values()}) == len(styles)


def test_figure_every_method_visible_labels_apart_colours_kept():
    results = _eight_methods()
    fig = build_figure(results)
    loss_ax, acc_ax, params_ax, cost_ax = fig.axes[:4]
    renderer = fig.canvas.get_renderer()

    # (b): one line per method, each with its own colour and marker, the same colour as in (a)
    val_lines = [line for line in acc_ax.get_lines() if not line.get_label().startswith("_")]
    loss_lines = [line for line in loss_ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in val_lines] == list(TRAINABLE)
    styles = {(line.get_color(), line.get_marker()) for line in val_lines}
    assert len(styles) == len(TRAINABLE)
    assert [line.get_color() for line in loss_lines] == [line.get_color() for line in val_lines]
    # equal values: the markers are shifted sideways, so no two methods' markers share a position
    first_x = [line.get_xdata()[0] for line in val_lines]
    assert len(set(first_x)) == len(first_x)
    assert len(acc_ax.collections) == len(TRAINABLE)  # a band over seeds per method

    # (c): labels overlap neither each other nor leave the axes; markers keep the method colours
    labels = [t for t in params_ax.texts if t.get_text() in TRAINABLE]
    assert sorted(t.get_text() for t in labels) == sorted(TRAINABLE)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels, strict=True), 2):
        assert not a.overlaps(b), f"{ta.get_text()!r} overprints {tb.get_text()!r}"
    inside = params_ax.get_window_extent(renderer)
    assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1 for b in boxes)

    # (d): no method colour used for another meaning
    bar_colours = {tuple(round(c, 3) for c in p.get_facecolor()[:3]) for p in cost_ax.patches}
    from matplotlib.colors import to_rgb

    method_rgb = {tuple(round(c, 3) for c in to_rgb(c)) for c in METHOD_COLORS}
    assert bar_colours and not (bar_colours & method_rgb)

    # what the loss is, and which figure this is
    assert "cross-entropy per target token" in loss_ax.get_title()
    assert fig.texts[0].get_text().startswith("Figure 1") or fig._suptitle.get_text().startswith("Figure 1")


def test_memory_figure_separates_methods_and_says_what_it_counts():
    results = _eight_methods(seeds=(0,))
    fig = build_memory_figure(results)
    ax = fig.axes[0]
    widths = {}
    for patch in ax.patches:
        widths.setdefault(patch.get_facecolor()[:3], []).append(patch.get_width())
    training_state = sorted(min(w) for w in widths.values())
    assert len(training_state) == len(TRAINABLE) and len(set(training_state)) == len(TRAINABLE)
    assert fig._suptitle.get_text().startswith("Figure 2")
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "AdamW" in caption and "Activations are not counted" in caption


def test_report_writes_both_figures_and_the_table(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_eight_methods()))
    written = render_report(path, tmp_path / "out")
    assert {p.name for p in written} == {FIGURE_FILE, MEMORY_FIGURE_FILE, TABLE_FILE}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            '{"schema_version": 1, "runs": []}', "schema_version 1, this t5peft reads 2 and 3", id="old-schema"
        ),
        pytest.param("{not json", "not valid JSON", id="not-json"),
        pytest.param(
            '{"method": "lora", "test": {}, "config": {}}',
            "the results of one `t5peft train` run .* report renders the t5_peft_results.json of a `t5peft compare`",
            id="a-train-run",
        ),
    ],
)
def test_report_refuses_bad_files_in_one_line(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ReportError, match=message):
        render_report(path)


def test_report_takes_a_comparison_folder_and_names_a_folder_without_results(tmp_path):
    (tmp_path / "cmp").mkdir()
    with pytest.raises(ReportError, match="cmp: a folder without t5_peft_results.json"):
        render_report(tmp_path / "cmp")
    (tmp_path / "cmp" / "t5_peft_results.json").write_text(json.dumps(_eight_methods()))
    assert {p.name for p in render_report(tmp_path / "cmp")} == {FIGURE_FILE, MEMORY_FIGURE_FILE, TABLE_FILE}


# --------------------------------------------------------------------------------------------------
# Times taken while runs shared the device are marked in the table and in figure 1 (d)


def _shared_lora_alone_ia3():
    runs = [
        fake_run("lora", 0, 1e-3, val=0.7, test=0.7, share=device_share(2, 1)),
        fake_run("lora", 1, 1e-3, val=0.7, test=0.7, share=device_share(2, 1)),
        fake_run("ia3", 0, 3e-3, val=0.6, test=0.6, share=device_share(1, None)),
        fake_run("ia3", 1, 3e-3, val=0.6, test=0.6, share=device_share(1, None)),
    ]
    return results_of(runs, [{"name": "lora", "lr": 1e-3}, {"name": "ia3", "lr": 3e-3}])


def _cost_panel_texts(results):
    cost_ax = build_figure(results).axes[3]
    return " ".join(cost_ax.get_title().split()), [t.get_text() for t in cost_ax.texts]


def test_times_of_runs_that_shared_the_device_are_marked():
    results = _shared_lora_alone_ia3()
    assert results["summary"]["lora"]["device_share"] == {"runs_at_once": 2, "threads": [1], "unrecorded": 0}
    assert results["summary"]["ia3"]["device_share"] == {"runs_at_once": 1, "threads": [None], "unrecorded": 0}

    table = markdown_table(results)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["lora"].count(" † |") == 2 and "†" not in rows["ia3"]  # training time and examples/s
    assert (
        "† Timed while other runs of the plan trained on the same device (lora: up to 2 runs at once on the device, "
        "1 CPU thread each)" in table
    )

    title, texts = _cost_panel_texts(results)
    assert "†: lora timed while runs shared the device (up to 2 runs at once on the device, 1 CPU thread each)" in title
    assert texts.count("†") == 1  # above lora's time bar only


def test_runs_alone_on_their_device_are_said_so_and_panel_d_is_unmarked():
    runs = [fake_run(m, 0, 1e-3, val=0.6, test=0.6, share=device_share(1, None)) for m in ("lora", "ia3")]
    results = results_of(runs, [{"name": "lora", "lr": 1e-3}, {"name": "ia3", "lr": 1e-3}], seeds=(0,))
    table = markdown_table(results)
    assert "Every run was timed with its device to itself" in table and "†" not in table
    title, texts = _cost_panel_texts(results)
    assert title == "(d) Training time and measured peak memory, relative to lora" and "†" not in texts


def test_results_from_before_the_share_record_say_it_is_unknown():
    runs = [fake_run(m, 0, 1e-3, val=0.6, test=0.6) for m in ("lora", "ia3")]
    results = results_of(runs, [{"name": "lora", "lr": 1e-3}, {"name": "ia3", "lr": 1e-3}], seeds=(0,))
    for summary in results["summary"].values():
        del summary["device_share"]  # as a results file written before the record has it
    table = markdown_table(results)
    assert "Whether runs shared the device while they were timed is not recorded" in table and "†" not in table
    title, texts = _cost_panel_texts(results)
    assert title == "(d) Training time and measured peak memory, relative to lora" and "†" not in texts
