"""``--weights``: a reference checkpoint into a native preset through the parity mapping.

Checkpoints come from tiny transformers models saved into temporary directories: with their
weights loaded, our tiny ViLT, CLIP and LXMERT compute what transformers computes; a checkpoint
that does not match is a one-line error naming the first mismatches, before anything is copied,
and on the command line before the store is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from architectures import (  # noqa: E402 - after the skip
    HF_PRESETS,
    build_loaded,
    build_model,
    check_sources,
    resolve_preset,
)
from benchmarks.parity import reference_inputs  # noqa: E402
from vlbench.cli import main  # noqa: E402
from vlbench.store import Store  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-4}


def reference(class_name: str, hf_preset: str) -> torch.nn.Module:
    """A tiny transformers model at the native tiny twin's sizes, random weights."""
    import transformers

    torch.manual_seed(1)
    config = HF_PRESETS.get(hf_preset).library_config()
    return getattr(transformers, class_name)(config).eval()


@pytest.fixture(scope="module")
def vilt_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("vilt")
    theirs = reference("ViltForQuestionAnswering", "hf-vilt-vqa-tiny")
    theirs.save_pretrained(path)
    return path, theirs


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("clip")
    theirs = reference("CLIPModel", "hf-clip-tiny")
    theirs.save_pretrained(path)
    return path, theirs


def outputs(name: str, model: torch.nn.Module, theirs: torch.nn.Module) -> tuple:
    p = resolve_preset(name)
    images, ids, mask = model.example_inputs(2, p.image_size, p.text_len, seed=3)
    with torch.no_grad():
        return model(images, ids, mask), theirs(**reference_inputs(p, images, ids, mask))


def test_vilt_from_save_pretrained_computes_what_transformers_does(vilt_dir) -> None:
    path, theirs = vilt_dir
    ours, record = build_loaded(resolve_preset("vilt-b32-tiny"), head=True, weights=str(path))
    mine, ref = outputs("vilt-b32-tiny", ours.eval(), theirs)
    # --head: our VQA head is their classifier; the pooled output feeds both
    torch.testing.assert_close(mine, ref.logits, **TOL)
    w = record["weights"]
    assert w["path"] == str(path.resolve()) and w["format"] == "safetensors"
    assert w["bytes"] == (path / "model.safetensors").stat().st_size
    assert len(w["sha256"]) == 64 and w["reference"] == "ViltModel" and w["unused"] == []


def test_without_head_the_task_head_is_left_unused(vilt_dir) -> None:
    path, _ = vilt_dir
    _, record = build_loaded(resolve_preset("vilt-b32-tiny"), weights=str(path))
    assert record["weights"]["unused"] == [f"classifier.{i}.{t}" for i in (0, 1, 3)
                                           for t in ("bias", "weight")]


@pytest.mark.parametrize("form", ["directory", "safetensors", "torch"])
def test_clip_from_each_checkpoint_form(clip_dir, tmp_path: Path, form: str) -> None:
    path, theirs = clip_dir
    if form == "safetensors":
        path = path / "model.safetensors"
    elif form == "torch":
        path = tmp_path / "clip.pt"
        torch.save(theirs.state_dict(), path)
    ours, record = build_loaded(resolve_preset("clip-vit-b32-tiny"), weights=str(path))
    mine, ref = outputs("clip-vit-b32-tiny", ours.eval(), theirs)
    torch.testing.assert_close(mine.logits, ref.logits_per_image, **TOL)
    assert record["weights"]["format"] == ("torch" if form == "torch" else "safetensors")


def test_lxmert_and_the_listed_visualbert_differences(tmp_path: Path) -> None:
    theirs = reference("LxmertModel", "hf-lxmert-tiny")
    theirs.save_pretrained(tmp_path / "lx")
    ours, _ = build_loaded(resolve_preset("lxmert-precomputed-tiny"), weights=str(tmp_path / "lx"))
    mine, ref = outputs("lxmert-precomputed-tiny", ours.eval(), theirs)
    torch.testing.assert_close(mine.pooled, ref.pooled_output, **TOL)
    reference("VisualBertModel", "hf-visualbert-tiny").save_pretrained(tmp_path / "vb")
    _, record = build_loaded(resolve_preset("visualbert-precomputed-tiny"),
                             weights=str(tmp_path / "vb"))
    w = record["weights"]
    assert w["unused"] == ["embeddings.visual_position_embeddings.weight"]
    assert w["kept_initialised"] == ["fusion.norm.weight", "fusion.norm.bias"]
    assert "post-LN" in w["note"]


def mismatch(preset: str, path: Path) -> str:
    """The one-line refusal, which the meta-device check and the load give alike."""
    p = resolve_preset(preset)
    with pytest.raises(ValueError) as checked:
        check_sources([p], weights=str(path))
    model = build_model(p)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(ValueError) as loaded:
        build_loaded(p, weights=str(path))
    assert str(checked.value) == str(loaded.value) and "\n" not in str(loaded.value)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    return str(loaded.value)


def test_a_checkpoint_of_another_model_type_is_refused(clip_dir) -> None:
    message = mismatch("vilt-b32-tiny", clip_dir[0])
    assert "holds a 'clip' model, vilt-b32-tiny takes 'vilt'" in message


def test_missing_unexpected_and_misshapen_tensors_are_listed(clip_dir, tmp_path: Path) -> None:
    state = dict(clip_dir[1].state_dict())
    del state["logit_scale"]
    state["extra.weight"] = torch.zeros(2)
    state["visual_projection.weight"] = torch.zeros(8, 64)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    message = mismatch("clip-vit-b32-tiny", path)
    assert message.startswith(f"--weights {path} does not match clip-vit-b32-tiny")
    assert "1 missing (logit_scale)" in message
    assert "1 unexpected (extra.weight)" in message
    assert "visual_projection.weight: (8, 64) in the checkpoint, (32, 64) here" in message


def test_a_detector_preset_names_its_precomputed_twin(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compare lxmert-precomputed-tiny instead"):
        check_sources([resolve_preset("lxmert-tiny")], weights=str(tmp_path))


def test_command_line_records_the_checkpoint_or_refuses_before_the_store(
        clip_dir, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "r.db"
    bad = main(["run", "--models", "vilt-b32-tiny", "--weights", str(clip_dir[0]),
                "--db", str(db), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert bad == 2 and len(err.splitlines()) == 1 and "does not match vilt-b32-tiny" in err
    assert not db.exists()
    ok = main(["run", "--models", "clip-vit-b32-tiny", "--weights", str(clip_dir[0]),
               "--db", str(db), "--repeats", "2", "--min-time", "0", "--warmup", "0",
               "--no-progress", "--device", "cpu"])
    assert ok == 0
    with Store.open(db) as store:
        (case,) = store.cases(1)
        run = store.get_run(1)
    assert case.settings["weights"]["sha256"] and case.settings["weights"]["bytes"] > 0
    assert run.settings["weights"] == str(clip_dir[0].resolve())
