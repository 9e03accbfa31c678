"""User plugins (vlbench.plugins): a file given with --plugin and an installed entry point
register embedders, fusions and presets that list, profile, run and report treat like the
built-in ones; a broken plugin is a one-line error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vlbench.plugins as plugins
from architectures import FUSIONS, PRESETS
from feature_extractors import EMBEDDERS
from vlbench.cli import main

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "docs" / "examples" / "vlbench_plugin_example.py")


@pytest.fixture(autouse=True)
def _registries_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What a test's plugins register is gone afterwards: other tests list every preset."""
    saved = [(r, dict(r._items)) for r in (PRESETS, EMBEDDERS, FUSIONS)]
    monkeypatch.setattr(plugins, "_loaded_files", {})
    yield
    for registry, items in saved:
        registry._items.clear()
        registry._items.update(items)
    for name in [m for m in sys.modules if m.startswith("vlbench_plugin_")]:
        del sys.modules[name]


def test_plugin_model_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "models", "--plugin", PLUGIN]) == 0
    assert "conv-stem-vilt" in capsys.readouterr().out
    assert main(["list", "embedders", "--plugin", PLUGIN]) == 0
    assert "conv-stem" in capsys.readouterr().out
    assert main(["profile", "conv-stem-vilt", "--plugin", PLUGIN]) == 0
    out = capsys.readouterr().out
    assert "visual.refine" in out and "visual.stem" in out
    db = str(tmp_path / "p.db")
    assert main(["run", "--plugin", PLUGIN, "--models", "conv-stem-vilt", "--db", db,
                 "--repeats", "3", "--min-time", "0", "--warmup", "1", "--no-progress",
                 "--device", "cpu"]) == 0
    assert "conv-stem-vilt" in capsys.readouterr().out
    out_html = tmp_path / "r.html"
    assert main(["report", "--db", db, "--out", str(out_html), "--plugin", PLUGIN]) == 0
    page = out_html.read_text()
    assert "conv-stem-vilt" in page and "visual.refine" in page
    # a plugin file loads once per process, whatever the number of commands
    assert plugins.load_plugin_file(PLUGIN) == plugins.load_plugin_file(PLUGIN)


def test_plugin_composes_with_builtin_fusions(capsys: pytest.CaptureFixture) -> None:
    """A plugin embedder is a visual embedder like any other: EMBEDDER+FUSION pairs work."""
    assert main(["profile", "conv-stem+dual-encoder", "--plugin", PLUGIN, "--size", "tiny"]) == 0
    assert "visual.refine" in capsys.readouterr().out


def _error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbench: error:") and "\n" not in err
    return err


def test_broken_plugins_are_one_line_errors(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in _error(capsys, "list", "--plugin", str(tmp_path / "none.py"))
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('boom\\nsecond line')\n")
    assert "RuntimeError: boom" in _error(capsys, "list", "--plugin", str(raising))
    clash = tmp_path / "clash.py"
    clash.write_text("from architectures import PRESETS\n"
                     "PRESETS.register('vilt-b32', PRESETS.get('vilt-b32'))\n")
    assert "already registered" in _error(capsys, "list", "--plugin", str(clash))


def test_entry_point_plugins_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution that declares ``vlbench.plugins`` entry points: a module is imported, a
    callable is called."""
    pkg = tmp_path / "my_vlbench_ext.py"
    pkg.write_text(
        "from dataclasses import replace\n"
        "from architectures import PRESETS\n"
        "def register():\n"
        "    PRESETS.register('ep-vilt', replace(PRESETS.get('vilt-b32-tiny'), name='ep-vilt'))\n")
    dist = tmp_path / "my_vlbench_ext-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-vlbench-ext\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vlbench.plugins]\nmine = my_vlbench_ext:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    try:
        plugins.load_plugins()
        assert "ep-vilt" in PRESETS
        plugins.load_plugins()  # once per process: a second call does not register twice
    finally:
        PRESETS._items.pop("ep-vilt", None)
        sys.modules.pop("my_vlbench_ext", None)


FUSION_PLUGIN = str(REPO / "docs" / "examples" / "vlbench_fusion_plugin_example.py")


def test_plugin_fusion_composes_with_every_builtin_embedder(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A plugin that registers only a fusion composes with the built-in embedders through the
    registry entries' composition defaults, exactly as a built-in fusion does."""
    db = str(tmp_path / "f.db")
    pairs = "patch+modality-ffn,grid+modality-ffn,region+modality-ffn"
    assert main(["run", "--plugin", FUSION_PLUGIN, "--compose", pairs, "--size", "tiny",
                 "--db", db, "--repeats", "2", "--min-time", "0", "--warmup", "1",
                 "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in pairs.split(","):
        assert f"{name}-tiny" in out
    assert main(["profile", "region+modality-ffn", "--plugin", FUSION_PLUGIN, "--size",
                 "tiny"]) == 0
    out = capsys.readouterr().out
    assert "fusion.text_ffn" in out and "fusion.vision_ffn" in out and "visual.nms" in out
    assert main(["list", "pairs", "--plugin", FUSION_PLUGIN]) == 0
    assert "modality-ffn" in capsys.readouterr().out


def test_fusion_without_composition_defaults_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bare = tmp_path / "bare.py"
    bare.write_text(
        "from dataclasses import replace\n"
        "from architectures import FUSIONS\n"
        "FUSIONS.register('bare', replace(FUSIONS.get('single-stream'), name='bare',\n"
        "                 defaults=None))\n")
    err = _error(capsys, "profile", "patch+bare", "--plugin", str(bare))
    assert "fusion 'bare' cannot be composed" in err
