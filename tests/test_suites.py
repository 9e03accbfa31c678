"""Suites: built-in YAML files found as package data, user files by path, and one-line errors
for everything a hand-written suite can get wrong."""

from __future__ import annotations

from importlib import resources

import pytest

from architectures import PRESETS, resolve_preset
from vlbench.parse import image_size, int_list
from vlbench.results import CaseSpec
from vlbench.suites import (
    ModelEntry,
    Suite,
    SuiteError,
    builtin_suites,
    load_suite,
    parse_suite,
)
from vlbench.timing import TimingOptions

# -- built-in suites ----------------------------------------------------------------------------


def test_builtin_suites_are_the_packaged_yaml_files() -> None:
    packaged = sorted(
        entry.name.removesuffix(".yaml")
        for entry in resources.files("benchmarks").joinpath("suites").iterdir()
        if entry.name.endswith(".yaml")
    )
    names = builtin_suites()
    assert names == packaged
    assert {"latency", "smoke"} <= set(names)


@pytest.mark.parametrize("name", builtin_suites())
def test_every_builtin_suite_loads_from_any_directory(
    name: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Built-ins come from importlib.resources, not from a path relative to the working directory.
    monkeypatch.chdir(tmp_path)
    suite = load_suite(name)
    assert isinstance(suite, Suite)
    assert suite.name == name
    assert suite.description
    assert suite.models
    for entry in suite.models:
        resolve_preset(entry.model)  # a preset or a composed EMBEDDER+FUSION pair
    TimingOptions(**suite.timing)  # the suite's timing overrides are valid options
    cases = suite.cases("cpu")
    # a re-ranking model's retrieval: one case per k
    per_model = sum(len(suite.rerank_ks(e.model, t)) for e in suite.models for t in suite.tasks)
    assert len(cases) == (per_model * len(suite.batch_sizes) * len(suite.precisions)
                          * len(suite.modes) * len(suite.threads))


def test_builtin_suite_is_not_shadowed_by_a_directory_of_the_same_name(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latency").mkdir()
    assert load_suite("latency").name == "latency"


def test_latency_suite_is_the_papers_comparison() -> None:
    suite = load_suite("latency")
    # one preset per visual embedder of the ViLT paper's Figure 1 (patch, grid, region), CLIP
    published = [n for n in PRESETS.names()
                 if not n.endswith(("-tiny", "-precomputed"))]
    assert sorted(e.model for e in suite.models) == sorted(published)
    assert [e.model for e in suite.models][:4] == [
        "vilt-b32", "pixelbert-r50", "pixelbert-x152", "uniter-base"]
    assert suite.batch_sizes == (1,)
    assert suite.precisions == ("fp32",)


def test_latency_cases_use_the_canonical_inputs() -> None:
    cases = {c.model: c for c in load_suite("latency").cases("cpu")}
    assert cases["vilt-b32"] == CaseSpec(
        model="vilt-b32", batch_size=1, image_size=(384, 640), text_len=40,
        precision="fp32", device="cpu",
    )
    for clip in ("clip-vit-b32", "clip-vit-b16"):
        assert cases[clip].image_size == (224, 224)
        assert cases[clip].text_len == 77
        assert cases[clip].device == "cpu"
    for name, case in cases.items():
        preset = PRESETS.get(name)
        assert (case.image_size, case.text_len) == (preset.image_size, preset.text_len)


def test_smoke_suite_only_uses_tiny_presets() -> None:
    suite = load_suite("smoke")
    assert suite.models
    assert all(e.model.endswith("-tiny") for e in suite.models)
    assert suite.batch_sizes == (1, 2)


def test_cases_expand_models_batches_and_precisions_in_order() -> None:
    suite = parse_suite(
        "models: [vilt-b32-tiny, clip-vit-b32-tiny]\nbatch_sizes: [1, 4]\n"
        "precisions: [fp32, bf16]\n"
    )
    cases = suite.cases("cuda:1")
    assert [(c.model, c.batch_size, c.precision) for c in cases] == [
        ("vilt-b32-tiny", 1, "fp32"), ("vilt-b32-tiny", 1, "bf16"),
        ("vilt-b32-tiny", 4, "fp32"), ("vilt-b32-tiny", 4, "bf16"),
        ("clip-vit-b32-tiny", 1, "fp32"), ("clip-vit-b32-tiny", 1, "bf16"),
        ("clip-vit-b32-tiny", 4, "fp32"), ("clip-vit-b32-tiny", 4, "bf16"),
    ]
    assert {c.device for c in cases} == {"cuda:1"}


def test_unknown_builtin_suite_lists_the_valid_ones() -> None:
    with pytest.raises(SuiteError) as info:
        load_suite("nope")
    message = str(info.value)
    assert "nope" in message
    assert "latency" in message and "smoke" in message
    assert "\n" not in message


# -- parse_suite --------------------------------------------------------------------------------


def test_parse_suite_defaults() -> None:
    suite = parse_suite("models: [vilt-b32]\n", "somewhere/mine.yaml")
    assert suite.name == "mine"  # no 'name': the file's stem
    assert suite.description == ""
    assert suite.models == (ModelEntry("vilt-b32"),)
    assert suite.batch_sizes == (1,)
    assert suite.precisions == ("fp32",)
    assert suite.timing == {}


def test_model_entry_mapping_overrides_the_canonical_input() -> None:
    suite = parse_suite(
        "name: custom\n"
        "models:\n"
        "  - model: vilt-b32\n"
        "    image_size: 224x224\n"
        "    text_len: 12\n"
        "  - clip-vit-b32\n"
    )
    assert suite.models[0] == ModelEntry("vilt-b32", (224, 224), 12)
    vilt, clip = suite.cases("cpu")
    assert (vilt.image_size, vilt.text_len) == ((224, 224), 12)
    assert (clip.image_size, clip.text_len) == ((224, 224), 77)  # canonical


def test_model_entry_may_override_only_one_field() -> None:
    suite = parse_suite("models:\n  - {model: vilt-b32, text_len: 16}\n")
    (case,) = suite.cases("cpu")
    assert (case.image_size, case.text_len) == ((384, 640), 16)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [vilt-b32\n", "not valid YAML"),
        ("models:\n  - a\n - b\n", "not valid YAML at line"),
        ("- vilt-b32\n- clip-vit-b32\n", "expected a mapping"),
        ("just a string\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("models: [vilt-b32]\nbatch: [1]\n", "unknown key(s) batch"),
        ("models: [vilt-b32]\n1: 2\n", "unknown key(s) 1"),
        ("name: x\n", "'models' must be a non-empty list"),
        ("models: []\n", "'models' must be a non-empty list"),
        ("models: vilt-b32\n", "'models' must be a list"),
        ("models: [nope]\n", "unknown model 'nope'"),
        ("models: [{image_size: 224x224}]\n", "a model entry is a name or a mapping"),
        ("models: [{model: vilt-b32, size: 224}]\n", "unknown model entry key(s) size"),
        ("models: [{model: nope, text_len: 4}]\n", "unknown model 'nope'"),
        ("models: [vilt-b32]\nprecisions: [fp8]\n", "unknown precision 'fp8'"),
        ("models: [vilt-b32]\nprecisions: fp32\n", "'precisions' must be a list"),
        ("models: [vilt-b32]\nbatch_sizes: [0]\n", "batch_sizes must be positive integers"),
        ("models: [vilt-b32]\nbatch_sizes: [1, x]\n", "batch_sizes must be positive integers"),
        ("models: [vilt-b32]\nbatch_sizes: [-2]\n", "batch_sizes must be positive integers"),
        ("models: [vilt-b32]\nbatch_sizes: []\n", "batch_sizes must be positive integers"),
        ("models: [vilt-b32]\nbatch_sizes: 4\n", "'batch_sizes' must be a list"),
        ("models: [{model: vilt-b32, image_size: 224by224}]\n", "HEIGHTxWIDTH"),
        ('models: [{model: vilt-b32, image_size: "0x224"}]\n', "HEIGHTxWIDTH"),
        ("models: [{model: vilt-b32, text_len: 0}]\n", "text_len must be a positive integer"),
        ("models: [{model: vilt-b32, text_len: ten}]\n", "text_len must be a positive integer"),
        ("models: [{model: vilt-b32, text_len: true}]\n", "text_len must be a positive integer"),
        ("models: [vilt-b32]\ntiming: 3\n", "'timing' must be a mapping"),
    ],
)
def test_bad_suite_raises_one_line_suite_error(text: str, expected: str) -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("suite bad.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_suite_error_is_a_value_error() -> None:
    # The CLI turns ValueErrors into one-line usage errors; SuiteError must be one of them.
    assert issubclass(SuiteError, ValueError)


def test_unknown_model_in_a_suite_lists_the_valid_names() -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite("models: [vilt-b23]\n")
    assert "vilt-b32" in str(info.value)
    assert "clip-vit-b16" in str(info.value)


# -- suites from files --------------------------------------------------------------------------


def test_suite_loaded_from_a_file_path(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "description: two tiny models\n"
        "models:\n"
        "  - vilt-b32-tiny\n"
        "  - {model: clip-vit-b32-tiny, image_size: 96x128}\n"
        "batch_sizes: [1, 3]\n"
        "timing: {warmup: 0, min_repeats: 1}\n"
    )
    suite = load_suite(str(path))
    assert suite.name == "mine"
    assert suite.description == "two tiny models"
    assert suite.batch_sizes == (1, 3)
    assert suite.timing == {"warmup": 0, "min_repeats": 1}
    cases = suite.cases("cpu")
    assert len(cases) == 4
    assert {c.image_size for c in cases if c.model == "clip-vit-b32-tiny"} == {(96, 128)}
    assert {c.image_size for c in cases if c.model == "vilt-b32-tiny"} == {(64, 96)}


def test_suite_file_without_yaml_suffix_is_loaded_by_path(tmp_path) -> None:
    path = tmp_path / "suite.txt"
    path.write_text("name: plain\nmodels: [clip-vit-b16-tiny]\n")
    assert load_suite(str(path)).name == "plain"


def test_missing_suite_file_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(SuiteError) as info:
        load_suite(str(tmp_path / "absent.yaml"))
    message = str(info.value)
    assert "cannot read suite file" in message and "absent.yaml" in message
    assert "\n" not in message


def test_bad_suite_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models: [vilt-b32]\nprecisions: [fp64]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    assert str(path) in str(info.value)
    assert "fp64" in str(info.value)


# -- small parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("384x640", (384, 640)),
        ("224", (224, 224)),
        ("224X160", (224, 160)),
        (" 96 x 128 ", (96, 128)),
        (384, (384, 384)),  # YAML gives a bare number as an int
    ],
)
def test_parse_image_size(text: object, expected: tuple[int, int]) -> None:
    assert image_size(text) == expected


@pytest.mark.parametrize(
    "text", ["384by640", "384x640x3", "x640", "384x", "", "0x640", "384x0", "-1", "a", "3.5x2"]
)
def test_parse_image_size_rejects_bad_forms(text: str) -> None:
    with pytest.raises(ValueError, match="HEIGHTxWIDTH") as info:
        image_size(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", (1,)), ("1,8,32", (1, 8, 32)), ("2, 4", (2, 4)), (16, (16,))],
)
def test_parse_int_list(text: object, expected: tuple[int, ...]) -> None:
    assert int_list(text, "--batch-sizes") == expected


@pytest.mark.parametrize("text", ["", "0", "1,0", "-1", "1,x", "1,,2", "1.5", "a,b"])
def test_parse_int_list_rejects_non_positive_or_non_integers(text: str) -> None:
    with pytest.raises(ValueError) as info:
        int_list(text, "--batch-sizes")
    message = str(info.value)
    assert message.startswith("--batch-sizes must be positive integers")
    assert repr(text) in message
