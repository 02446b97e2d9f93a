"""Cross-dataset benchmark: matrix, audit, verdicts, loading, report and CLI on seeded synthetic sources.

The in-memory sources are built here so that the truth is known: a bright blob in the left lung is
the disease signal (AUROC must be high, also across sources) and a corner marker burnt into one
source's films is the planted shortcut (the audit must find it; when the label follows the source,
the verdict must say so).
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, Features, Image, List, Value
from PIL import Image as PILImage
from pycocotools import mask as coco_mask
from typer.testing import CliRunner

from covid_cxr_unified.harmonize.benchmark import (
    OTHERS,
    POOLED,
    AuditResult,
    BenchmarkOptions,
    CountTable,
    audit_verdicts,
    benchmark_build,
    label_verdicts,
    run_benchmark,
)
from covid_cxr_unified.harmonize.benchmark_baseline import lung_mask, model_pixels
from covid_cxr_unified.harmonize.benchmark_data import load_build, parse_task
from covid_cxr_unified.harmonize.benchmark_report import PLOTS, matrix_data, render_markdown, write_report
from covid_cxr_unified.harmonize.benchmark_stats import Score, auroc, cramers_v
from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.features import LABEL_STATE_NAMES, VIEW_NAMES
from covid_cxr_unified.harmonize.synthetic.images import synthetic_array

SIZE = 40
FAST = {"n_bootstrap": 200, "size": 16}
FEATURES = Features(
    {
        "record_id": Value("string"),
        "source": Value("string"),
        "patient_id": Value("string"),
        "age_years": Value("float64"),
        "image": Image(),
        "image_sha256": Value("string"),
        "bits_stored": Value("int32"),
        "photometric_interpretation": Value("string"),
        "view": ClassLabel(names=VIEW_NAMES),
        "covid19": ClassLabel(names=LABEL_STATE_NAMES),
        "findings": List(
            {"finding": Value("string"), "state": Value("string"), "cui": Value("string"), "raw": Value("string")}
        ),
        "survival": Value("bool"),
        "masks": List({"label": Value("string"), "size": List(Value("int32"), length=2), "counts": Value("string")}),
        "links": List({"record_id": Value("string"), "patient_id": Value("string"), "relation": Value("string")}),
    }
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _picture(rng: random.Random, *, disease: bool, marker: bool) -> bytes:
    """A chest-like image; disease = a bright blob in the left lung; marker = a white corner square."""
    array = synthetic_array(rng, SIZE, SIZE)
    if disease:
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        cy, cx = SIZE / 2 + rng.uniform(-2, 2), 0.3 * SIZE + rng.uniform(-1, 1)
        array = array + 140 * np.exp(-(((x - cx) / 4) ** 2 + ((y - cy) / 5) ** 2))
    if marker:
        array[1:7, 1:7] = 255
    return _png(array)


def _row(
    source: str, index: int, state: str, rng: random.Random, *, marker: bool, signal: bool = True
) -> dict[str, Any]:
    image = _picture(rng, disease=signal and state == "positive", marker=marker)
    return {
        "record_id": f"{source}:{index}",
        "source": source,
        "patient_id": f"{source}:p{index // 2}",  # two images per patient
        "age_years": float(rng.randint(20, 90)),
        "image": {"bytes": image, "path": None},
        "image_sha256": f"{source}-{index}",
        "bits_stored": 8,
        "photometric_interpretation": "MONOCHROME2",
        "view": VIEW_NAMES.index(("PA", "AP", "AP_SUPINE")[index % 3]),
        "covid19": LABEL_STATE_NAMES.index(state),
        "findings": [],
        "survival": None,
        "masks": [],
        "links": [],
    }


def _source(
    name: str, n: int, states: tuple[str, ...], seed: int, *, marker: bool, signal: bool = True
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [_row(name, i, states[(i // 2) % len(states)], rng, marker=marker, signal=signal) for i in range(n)]


def _splits(*sources: list[dict[str, Any]]) -> dict[str, Dataset]:
    """About two thirds of the patients to train, the rest to test, by a seeded draw per patient id."""
    parts: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for rows in sources:
        for row in rows:
            parts["test" if random.Random(row["patient_id"]).random() < 1 / 3 else "train"].append(row)
    return {split: Dataset.from_list(rows, features=FEATURES) for split, rows in parts.items()}


@pytest.fixture(scope="module")
def two_sources() -> dict[str, Dataset]:
    """Both sources hold both classes; the blob is the signal; source b has a corner marker."""
    return _splits(
        _source("alpha", 120, ("positive", "negative"), seed=1, marker=False),
        _source("bravo", 120, ("positive", "negative", "uncertain"), seed=2, marker=True),
    )


@pytest.fixture(scope="module")
def two_sources_result(two_sources: dict[str, Dataset]) -> Any:
    return run_benchmark(two_sources, BenchmarkOptions(**FAST))


def test_disease_signal_is_learned_within_and_across_sources(
    two_sources: dict[str, Dataset], two_sources_result: Any
) -> None:
    result = two_sources_result
    assert result.sources == ("alpha", "bravo")
    assert result.train_rows == ("alpha", "bravo", POOLED, OTHERS)
    assert result.test_columns == ("alpha", "bravo", POOLED)
    for train in ("alpha", "bravo", POOLED):
        for test in ("alpha", "bravo", POOLED):
            score = result.cell(train, test)
            assert score.status == "ok", (train, test, score)
            assert score.auroc is not None and score.auroc >= 0.9, (train, test, score)
            assert score.ci_low is not None and score.ci_high is not None
            assert score.ci_low <= score.auroc <= score.ci_high
    # leave-one-source-out: trained on bravo only, tested on alpha
    assert result.cell(OTHERS, "alpha").auroc == result.cell("bravo", "alpha").auroc
    # n per cell: the labeled test records of the column's source; uncertain ones are excluded, not scored
    test_states = [(r["source"], LABEL_STATE_NAMES[r["covid19"]]) for r in two_sources["test"]]
    for source in ("alpha", "bravo"):
        expected = sum(1 for s, state in test_states if s == source and state in ("positive", "negative"))
        assert result.cell("alpha", source).n == expected > 10
        per_split = result.label_by_source_per_split["test"]
        assert per_split.get(source, "positive") + per_split.get(source, "negative") == expected
    assert result.cell(POOLED, POOLED).n == result.cell(POOLED, "alpha").n + result.cell(POOLED, "bravo").n


def test_excluded_states_are_counted_per_source(two_sources_result: Any) -> None:
    table = two_sources_result.label_by_source
    assert table.columns == ("positive", "negative", "uncertain")
    assert table.get("alpha", "uncertain") == 0
    assert table.get("bravo", "uncertain") == 40  # every third patient of 60, two images each
    assert table.get("alpha", "positive") + table.get("alpha", "negative") == 120


def test_audit_finds_the_planted_source_marker(two_sources_result: Any) -> None:
    source = next(a for a in two_sources_result.audit if a.attribute == "source")
    assert source.classes == ("alpha", "bravo")
    assert source.score.auroc is not None and source.score.auroc >= 0.95
    assert any(v.startswith("SHORTCUT: the pixels predict the source") for v in two_sources_result.verdicts)
    assert any(v.startswith("OK: both classes come from several sources") for v in two_sources_result.verdicts)
    assert not any(v.startswith("CONFOUNDED") for v in two_sources_result.verdicts)


def test_label_confounded_with_source_is_flagged_and_the_shortcut_scores() -> None:
    """All positives from one source, all negatives from the other, no disease signal at all."""
    splits = _splits(
        _source("alpha", 60, ("positive",), seed=3, marker=False, signal=False),
        _source("bravo", 60, ("negative",), seed=4, marker=True, signal=False),
    )
    result = run_benchmark(splits, BenchmarkOptions(**FAST))
    assert any(v.startswith("CONFOUNDED: every positive (60) comes from alpha") for v in result.verdicts)
    assert any(v.startswith("CONFOUNDED: every negative (60) comes from bravo") for v in result.verdicts)
    # a per-source model cannot be trained, and says so instead of crashing
    assert result.cell("alpha", "alpha").status == "not_trained"
    assert "0 neg" in result.cell("alpha", "alpha").note
    assert result.cell(OTHERS, "bravo").status == "not_trained"
    # pooled, the corner marker alone "detects COVID-19": the DeGrave et al. trap, reproduced
    pooled = result.cell(POOLED, POOLED)
    assert pooled.auroc is not None and pooled.auroc >= 0.95
    # within one test source there is a single class: no AUROC, the reason instead
    assert result.cell(POOLED, "alpha").status == "single_class"
    assert result.cell(POOLED, "alpha").note == "single class: only positives"


def test_too_few_test_records_of_a_class_give_counts_not_auroc() -> None:
    rows = _source("alpha", 60, ("positive", "negative"), seed=5, marker=False)
    splits = _splits(rows)
    test_ids = [r["record_id"] for r in splits["test"] if LABEL_STATE_NAMES[r["covid19"]] == "positive"]
    keep = [i for i, r in enumerate(splits["test"]) if r["record_id"] not in test_ids[1:]]
    splits["test"] = splits["test"].select(keep)
    score = run_benchmark(splits, BenchmarkOptions(**FAST)).cell("alpha", "alpha")
    assert (score.status, score.n_positive, score.auroc) == ("too_few", 1, None)


def test_a_test_split_without_labels_or_ages_gives_reasons_not_errors() -> None:
    splits = _splits(_source("alpha", 60, ("positive", "negative"), seed=6, marker=False))
    unlabeled = LABEL_STATE_NAMES.index("not_annotated")
    splits["test"] = splits["test"].map(lambda row: {"covid19": unlabeled, "age_years": None})
    result = run_benchmark(splits, BenchmarkOptions(**FAST))
    assert {c.score.status for c in result.cells} == {"no_records"}
    age = next(a for a in result.audit if a.attribute == "age_group")
    assert age.score.status == "no_records"
    assert result.label_by_source_per_split["test"].get("alpha", "not_annotated") == len(splits["test"])


def test_user_model_gets_labeled_training_data_and_its_scores_are_used(two_sources: dict[str, Dataset]) -> None:
    seen: list[tuple[set[str], set[int]]] = []

    def factory(train: Dataset) -> Any:
        seen.append((set(train["source"]), set(train["label"])))
        return lambda test: np.asarray(test["age_years"], dtype=np.float64)  # age as the "model"

    result = run_benchmark(two_sources, BenchmarkOptions(**FAST), model=factory, model_name="age")
    assert result.model == "age"
    assert ({"alpha"}, {0, 1}) in seen and ({"alpha", "bravo"}, {0, 1}) in seen
    test = two_sources["test"]
    states = [LABEL_STATE_NAMES[v] for v in test["covid19"]]
    chosen = [i for i, s in enumerate(states) if s in ("positive", "negative") and test[i]["source"] == "alpha"]
    expected = auroc(
        np.asarray([states[i] == "positive" for i in chosen], dtype=np.int64),
        np.asarray([test[i]["age_years"] for i in chosen]),
    )
    assert result.cell("bravo", "alpha").auroc == pytest.approx(expected)
    # the audit still asks what the pixels reveal: the planted marker, found by the pixel baseline
    source = next(a for a in result.audit if a.attribute == "source")
    assert source.score.auroc is not None and source.score.auroc >= 0.95


def test_a_model_returning_bad_scores_is_refused(two_sources: dict[str, Dataset]) -> None:
    with pytest.raises(HarmonizeError, match="one finite score per row"):
        run_benchmark(two_sources, BenchmarkOptions(**FAST), model=lambda train: lambda test: np.zeros(3))
    with pytest.raises(HarmonizeError, match="one finite score per row"):
        run_benchmark(
            two_sources, BenchmarkOptions(**FAST), model=lambda train: lambda test: np.full(len(test), np.nan)
        )


def test_results_are_deterministic(two_sources: dict[str, Dataset], two_sources_result: Any) -> None:
    again = run_benchmark(two_sources, BenchmarkOptions(**FAST))
    assert again.to_dict() == two_sources_result.to_dict()
    other_seed = run_benchmark(two_sources, BenchmarkOptions(**FAST, seed=1))
    view = [next(a for a in r.audit if a.attribute == "view").score for r in (other_seed, two_sources_result)]
    assert view[0].auroc == view[1].auroc and view[0].ci_low != view[1].ci_low  # only the bootstrap moved


def test_tasks_name_their_label_states() -> None:
    assert parse_task("covid19").state({"covid19": LABEL_STATE_NAMES.index("not_annotated")}) == "not_annotated"
    assert parse_task("survival").state({"survival": False}) == "negative"
    assert parse_task("survival").state({"survival": None}) == "unknown"
    finding = parse_task("finding:pneumonia")
    assert finding.state({"findings": [{"finding": "pneumonia", "state": "negative"}]}) == "negative"
    assert finding.state({"findings": [{"finding": "covid19", "state": "positive"}]}) == "not_listed"
    for bad in ("finding:not_a_finding", "mortality"):
        with pytest.raises(HarmonizeError):
            parse_task(bad)


def test_monochrome1_is_inverted_and_16_bit_is_normalized() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=(32, 24))
    eight_bit = model_pixels(_png(base * 255), size=8, photometric_interpretation="MONOCHROME2")
    sixteen = PILImage.fromarray(((1 - base) * 4095).astype(np.uint16))
    buffer = io.BytesIO()
    sixteen.save(buffer, format="PNG")
    inverted = model_pixels(buffer.getvalue(), size=8, photometric_interpretation="MONOCHROME1", bits_stored=12)
    assert eight_bit.shape == inverted.shape == (64,)
    assert inverted.min() >= 0.0 and inverted.max() <= 1.0
    assert np.abs(eight_bit - inverted).max() < 0.03


def test_lung_masks_are_decoded_and_applied() -> None:
    lungs = np.zeros((20, 30), dtype=np.uint8, order="F")
    lungs[5:15, 3:12] = 1
    rle = coco_mask.encode(lungs)
    mask = lung_mask([{"label": "lung", "size": [20, 30], "counts": rle["counts"].decode()}, {"label": "ignore"}])
    assert mask is not None and mask.sum() == lungs.sum()
    assert lung_mask([{"label": "ignore", "size": [20, 30], "counts": "x"}]) is None
    pixels = model_pixels(_png(np.full((20, 30), 200.0) + np.arange(30)), size=10, lung_mask=mask)
    grid = pixels.reshape(10, 10)
    assert grid[0].max() == 0.0 and grid[5, 2] > 0.0


def test_cramers_v_and_auroc_edges() -> None:
    assert cramers_v(np.asarray([[10, 0], [0, 10]])) == pytest.approx(1.0)
    assert cramers_v(np.asarray([[5, 5], [5, 5]])) == pytest.approx(0.0)
    assert auroc(np.asarray([0, 0, 1, 1]), np.asarray([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(np.asarray([0, 1]), np.asarray([0.5, 0.5])) == 0.5


def _write_config(folder: Path, config: str, splits: dict[str, list[dict[str, Any]]]) -> None:
    for split, rows in splits.items():
        path = folder / "data" / config / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows, features=FEATURES).to_parquet(str(path))


def _rle(height: int, width: int) -> dict[str, Any]:
    lungs = np.zeros((height, width), dtype=np.uint8, order="F")
    lungs[5:35, 4:36] = 1
    return {"label": "lung", "size": [height, width], "counts": coco_mask.encode(lungs)["counts"].decode()}


def test_union_of_configs_folds_v7_into_its_ieee8023_image(tmp_path: Path) -> None:
    rng = random.Random(7)
    ieee = [_row("ieee8023", i, ("positive", "negative")[(i // 2) % 2], rng, marker=False) for i in range(12)]
    linked = {**_row("v7_darwin", 0, "positive", rng, marker=False), "masks": [_rle(SIZE, SIZE)]}
    linked["links"] = [{"record_id": "ieee8023:0", "patient_id": "ieee8023:p0", "relation": "same_image"}]
    by_hash = {**_row("v7_darwin", 1, "positive", rng, marker=False), "image_sha256": "ieee8023-4"}
    alone = _row("v7_darwin", 2, "positive", rng, marker=False)
    _write_config(tmp_path, "ieee8023", {"train": ieee[:8], "test": ieee[8:]})
    _write_config(tmp_path, "v7_darwin", {"train": [linked, by_hash], "test": [alone]})
    loaded = load_build(tmp_path)
    assert loaded.merged_v7 == 2 and "2 v7_darwin records folded" in loaded.origin
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert train["record_id"] == [r["record_id"] for r in ieee[:8]]
    assert train[0]["masks"][0]["label"] == "lung" and train[1]["masks"] == []
    assert sorted(set(test["source"])) == ["ieee8023", "v7_darwin"]


def test_all_config_is_used_alone_when_present(tmp_path: Path) -> None:
    rng = random.Random(8)
    rows = [_row("ieee8023", i, ("positive", "negative")[(i // 2) % 2], rng, marker=False) for i in range(8)]
    _write_config(tmp_path, "ieee8023", {"train": rows[:4], "test": rows[4:]})
    _write_config(tmp_path, "all", {"train": rows[:6], "test": rows[6:]})
    loaded = load_build(tmp_path)
    assert loaded.origin == "config `all`"
    assert len(loaded.splits["train"]) == 6 and len(loaded.splits["test"]) == 2
    _write_config(tmp_path, "bimcv", {"train": [_row("bimcv", 0, "positive", rng, marker=False)]})
    assert "do not include the configs bimcv" in load_build(tmp_path).origin


def test_the_card_says_which_shards_make_up_the_all_config(tmp_path: Path) -> None:
    """The `all` config may reference another config's shards instead of copying them."""
    rng = random.Random(10)
    rows = [_row("ieee8023", i, ("positive", "negative")[(i // 2) % 2], rng, marker=False) for i in range(8)]
    bimcv = [_row("bimcv", i, "positive", rng, marker=False) for i in range(3)]
    _write_config(tmp_path, "all", {"train": rows[:6], "test": rows[6:]})
    _write_config(tmp_path, "bimcv", {"train": bimcv})
    card = {
        "configs": [
            {"config_name": "bimcv", "data_files": [{"split": "train", "path": ["data/bimcv/train-*.parquet"]}]},
            {
                "config_name": "all",
                "data_files": [
                    {"split": "train", "path": ["data/all/train-00000-of-00001.parquet", "data/bimcv/train-*.parquet"]},
                    {"split": "test", "path": "data/all/test-00000-of-00001.parquet"},
                ],
            },
        ]
    }
    (tmp_path / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n# card\n", encoding="utf-8")
    loaded = load_build(tmp_path)
    assert loaded.origin == "config `all`"
    assert sorted(loaded.splits["train"]["source"]) == ["bimcv"] * 3 + ["ieee8023"] * 6
    assert len(loaded.splits["test"]) == 2


def test_lung_masked_benchmark_keeps_only_records_with_lung_masks(tmp_path: Path) -> None:
    rng = random.Random(9)
    rows = [_row("ieee8023", i, ("positive", "negative")[(i // 2) % 2], rng, marker=False) for i in range(36)]
    for row in rows[:24]:
        row["masks"] = [_rle(SIZE, SIZE)]
    result = run_benchmark(_splits(rows), BenchmarkOptions(**FAST, lung_masked=True))
    assert sum(sum(r) for r in result.label_by_source.counts) == 24
    assert "lung mask" in result.excluded and "lung-masked" in result.model


def test_report_plots_and_data(tmp_path: Path, two_sources_result: Any) -> None:
    written = write_report(two_sources_result, tmp_path)
    assert {p.name for p in written} == {*PLOTS, "benchmark.json", "benchmark.md"}
    for name in PLOTS:
        with PILImage.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.width >= 600 and img.height >= 300
            pixels = np.asarray(img.convert("RGB"))
        assert pixels.std() > 20, f"{name} looks blank"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, f"{name} has too few colours"
    data = json.loads((tmp_path / "benchmark.json").read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(two_sources_result.to_dict()))
    rows, columns, values, text = matrix_data(two_sources_result)
    for cell in data["matrix"]["cells"]:
        i, j = rows.index(cell["train"]), columns.index(cell["test"])
        assert values[i, j] == pytest.approx(cell["auroc"]) and f"n={cell['n']}" in text[i][j]
    assert np.isnan(values[rows.index(OTHERS), columns.index(POOLED)])
    assert text[rows.index(OTHERS)][columns.index(POOLED)] == "not applicable"
    markdown = (tmp_path / "benchmark.md").read_text(encoding="utf-8")
    assert markdown == render_markdown(two_sources_result)
    for name in PLOTS:
        assert f"({name})" in markdown
    assert all(v in markdown for v in two_sources_result.verdicts)


def test_report_shows_reasons_for_empty_cells(tmp_path: Path) -> None:
    splits = _splits(
        _source("alpha", 30, ("positive",), seed=3, marker=False, signal=False),
        _source("bravo", 30, ("negative",), seed=4, marker=True, signal=False),
    )
    result = run_benchmark(splits, BenchmarkOptions(**FAST))
    _, _, values, text = matrix_data(result)
    assert np.isnan(values[0, 0]) and text[0][0].startswith("not trained")
    write_report(result, tmp_path)
    with PILImage.open(tmp_path / "matrix.png") as img:
        assert np.asarray(img.convert("RGB")).std() > 20


def test_cli_benchmark_on_the_demo_build(tmp_path: Path) -> None:
    runner = CliRunner()
    build = tmp_path / "covid_cxr_unified"
    demo = runner.invoke(app, ["demo", "--out", str(build), "--sources-dir", str(tmp_path / "src"), "--no-progress"])
    assert demo.exit_code == 0, demo.output
    started = time.monotonic()
    report = tmp_path / "report"
    result = runner.invoke(
        app, ["benchmark", str(build), "--task", "survival", "--out", str(report), "--bootstrap", "200"]
    )
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 60
    assert "train \\ test" in result.output and f"wrote {report / 'benchmark.md'}" in result.output
    data = json.loads((report / "benchmark.json").read_text(encoding="utf-8"))
    assert "ieee8023" in data["sources"] and data["task"]["name"] == "survival"
    statuses = {c["status"] for c in data["matrix"]["cells"]}
    assert statuses <= {"ok", "no_records", "single_class", "too_few", "not_trained"}
    direct = benchmark_build(build, BenchmarkOptions(task="survival", n_bootstrap=200))
    assert direct.to_dict() == data


def test_cli_benchmark_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["benchmark", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "error: " in missing.output and "not a covid-cxr build" in missing.output
    (tmp_path / "data" / "ieee8023").mkdir(parents=True)
    bad_task = runner.invoke(app, ["benchmark", str(tmp_path), "--task", "finding:nope"])
    assert bad_task.exit_code != 0 and "unknown finding 'nope'" in bad_task.output


def test_verdicts_on_hand_made_tables() -> None:
    ages = ("pediatric (<18)", "adult (18-64)", "older (65+)", "unknown")
    by_source = CountTable(("a", "b"), ("positive", "negative"), ((40, 10), (10, 40)))
    pediatric = CountTable(ages, ("positive", "negative"), ((0, 30), (20, 0), (10, 0), (5, 5)))
    portable = CountTable(("PA", "AP", "LATERAL"), ("positive", "negative"), ((2, 18), (18, 2), (5, 5)))
    lines = label_verdicts(by_source, pediatric, portable)
    assert lines[0] == "ASSOCIATED: label and source are strongly associated (Cramér's V = 0.60)"
    assert any(v.startswith("CONFOUNDED: every negative with a known age (30) is pediatric (<18)") for v in lines)
    assert any(v.startswith("ASSOCIATED: portable AP films are 90% of frontal positives vs 10%") for v in lines)
    balanced = CountTable(ages, ("positive", "negative"), ((5, 5), (20, 20), (10, 10), (0, 0)))
    mixed = CountTable(("a", "b"), ("positive", "negative"), ((20, 20), (20, 20)))
    assert label_verdicts(mixed, balanced, portable)[0].startswith("OK: both classes come from several sources")


def test_shortcut_needs_an_interval_above_chance() -> None:
    sure = AuditResult("source", ("a", "b"), Score(40, 0, 0, auroc=0.95, ci_low=0.85, ci_high=1.0))
    unsure = AuditResult("view", ("AP", "PA"), Score(6, 0, 0, auroc=0.9, ci_low=0.4, ci_high=1.0))
    chance = AuditResult("age_group", ("x", "y"), Score(40, 0, 0, auroc=0.55, ci_low=0.4, ci_high=0.7))
    lines = audit_verdicts([sure, unsure, chance])
    assert len(lines) == 2
    assert lines[0].startswith("SHORTCUT: the pixels predict the source (0.95 [0.85, 1.00] n=40)")
    assert lines[1].startswith("POSSIBLE SHORTCUT: the pixels predict the view")


def test_max_per_source_streams_a_deterministic_patient_sample(tmp_path: Path) -> None:
    rng = random.Random(11)
    rows = [_row("ieee8023", i, ("positive", "negative")[(i // 2) % 2], rng, marker=False) for i in range(40)]
    bimcv = [_row("bimcv", i, "positive", rng, marker=False) for i in range(6)]
    _write_config(tmp_path, "ieee8023", {"train": rows[:30], "test": rows[30:]})
    _write_config(tmp_path, "bimcv", {"train": bimcv})
    first, again = load_build(tmp_path, max_per_source=8), load_build(tmp_path, max_per_source=8)
    train = first.splits["train"]
    assert sorted(train["source"]) == ["bimcv"] * 6 + ["ieee8023"] * 8
    assert train["record_id"] == again.splits["train"]["record_id"]
    kept = [r for r in train if r["source"] == "ieee8023"]
    patients = {r["patient_id"] for r in kept}
    assert len(patients) == 4  # two images per patient: whole patients come first
    assert all(isinstance(r["image"], PILImage.Image) for r in kept)
    assert len(first.splits["test"]) == 8
    result = benchmark_build(tmp_path, BenchmarkOptions(**FAST, max_per_source=8))
    assert "at most 8 records per source and split" in result.origin
    with pytest.raises(HarmonizeError):
        BenchmarkOptions(max_per_source=0)


@pytest.mark.realdata
def test_real_ieee8023_images_with_v7_lung_masks(shared_data: Path, tmp_path: Path) -> None:
    """Real JPEG/PNG images of every mode, real V7 lung masks folded into the all config."""
    runner = CliRunner()
    build = tmp_path / "real"
    args = ["build", "--ieee8023", str(shared_data / "ieee8023" / "metadata.csv")]
    args += ["--images", str(shared_data / "ieee8023" / "images-sample")]
    args += ["--v7", str(shared_data / "v7" / "covid-only-coco.zip"), "--out", str(build)]
    built = runner.invoke(app, [*args, "--split-ratios", "0.5,0,0.5", "--no-progress"])
    assert built.exit_code == 0, built.output
    masked = benchmark_build(build, BenchmarkOptions(task="survival", lung_masked=True, n_bootstrap=100))
    unmasked = benchmark_build(build, BenchmarkOptions(task="survival", n_bootstrap=100))
    n_masked = sum(sum(row) for row in masked.label_by_source.counts)
    n_all = sum(sum(row) for row in unmasked.label_by_source.counts)
    assert 20 <= n_masked < n_all  # the sample's V7-annotated images only
    for result in (masked, unmasked):
        cell = result.cell("ieee8023", "ieee8023")
        assert cell.n > 0 and (cell.status != "ok" or 0.0 <= (cell.auroc or 0.0) <= 1.0)
        view = next(a for a in result.audit if a.attribute == "view")
        assert view.score.n > 0
