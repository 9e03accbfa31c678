"""What a model cannot take at all is refused before it is built: an embedder's config says
(``check_input``: a detector's smallest anchor, one patch, one grid cell) and ``vlbench profile``
asks it first, so such an input is one line and exit status 2, not an error deep in the model.
(``vlbench run`` asks it while planning: tests/test_hostile_flags.py.)"""

from __future__ import annotations

import pytest

from architectures import PRESETS
from feature_extractors import RegionFeaturesConfig, check_visual_input
from vlbench.cli import main

PROFILE = {
    "below-anchor": (["uniter-base-tiny", "--image-size", "63x300"],
                     ["63x300", "smallest anchor (64 px)"]),
    "below-fpn-anchor": (["visualbert-tiny", "--image-size", "31x300"], ["smallest anchor"]),
    "below-patch": (["vilt-b32", "--image-size", "1x1"], ["1x1", "one 32x32 patch"]),
    "below-patch-16": (["clip-vit-b16", "--image-size", "15x224"], ["one 16x16 patch"]),
    "below-patch-pair": (["patch+two-stream-tiny", "--image-size", "16"], ["one 32x32 patch"]),
    "no-grid-cell": (["pixelbert-x152-tiny", "--image-size", "32"], ["32x32", "no grid cell"]),
}


@pytest.mark.parametrize("name", PROFILE)
def test_profile_refuses_an_input_the_model_cannot_take(
        capsys: pytest.CaptureFixture[str], name: str) -> None:
    argv, expected = PROFILE[name]
    capsys.readouterr()
    assert main(["profile", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("vlbench: error: ")
    assert "Traceback" not in err and all(text in err for text in expected)


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_canonical_input_is_one_its_model_takes(name: str) -> None:
    """The input checks refuse only what cannot run: every preset's own input passes, and a
    detector's smallest anchor is the boundary."""
    preset = PRESETS.get(name)
    check_visual_input(preset.visual, preset.image_size)
    if isinstance(preset.visual, RegionFeaturesConfig):
        side = 64 if preset.visual.head == "c4" else 32
        check_visual_input(preset.visual, (side, side))
        with pytest.raises(ValueError, match=f"smallest anchor \\({side} px\\)"):
            check_visual_input(preset.visual, (side - 1, 1000))


def test_the_smallest_inputs_that_run_still_profile(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["vilt-b32-tiny", "--image-size", "32"], ["pixelbert-r50-tiny", "--image-size",
                                                            "33"]):
        assert main(["profile", *argv]) == 0, capsys.readouterr().err
