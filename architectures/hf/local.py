"""``--hf-dir PATH``: a transformers model from a local ``save_pretrained`` directory, its
``config.json`` and, where present, its weights (random initialisation where there are none).
Never a hub name: only a directory that exists is read, with ``local_files_only``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..weights import digest, weight_files


def read_hf_dir(path: str | Path, config_class: str) -> dict[str, Any]:
    """The directory's ``config.json``, checked to be of ``config_class``'s model type; a
    one-line ``ValueError`` otherwise."""
    import transformers

    root = Path(path)
    config = root / "config.json"
    if not config.is_file():
        raise ValueError(f"--hf-dir {path}: no config.json there (expected a directory written "
                         "by save_pretrained)")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--hf-dir {path}: config.json is not readable JSON ({exc})") from None
    want = getattr(transformers, config_class).model_type
    if not isinstance(data, dict) or data.get("model_type") != want:
        got = data.get("model_type") if isinstance(data, dict) else None
        raise ValueError(f"--hf-dir {path}: holds a {got!r} model, this preset builds a "
                         f"{want!r} one ({config_class})")
    return data


def load_hf_dir(config_class: str, cls: type, path: str | Path) -> tuple[nn.Module, dict]:
    """``cls`` from the directory (fp32 whatever the checkpoint's dtype, since precision is the
    run's choice), and the record of what was read. A checkpoint that lacks tensors of ``cls``
    (saved from another class) is refused: random tensors among trained ones would pass
    unnoticed."""
    import transformers

    root = Path(path).resolve()
    data = read_hf_dir(root, config_class)
    config = getattr(transformers, config_class).from_pretrained(str(root),
                                                                 local_files_only=True)
    files = weight_files(root)
    record: dict[str, Any] = {"path": str(root), "model_type": data["model_type"],
                              "architectures": data.get("architectures"),
                              "config_sha256": digest([root / "config.json"])["sha256"]}
    if not files:
        record["weights"] = "none: random initialisation"
        return cls(config), {"hf_dir": record}
    model, info = cls.from_pretrained(str(root), config=config, local_files_only=True,
                                      dtype=torch.float32, output_loading_info=True)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ValueError(f"--hf-dir {path}: the checkpoint lacks {len(missing)} tensor(s) of "
                         f"{cls.__name__} ({shown}); it was saved from "
                         f"{', '.join(data.get('architectures') or ['another class'])}")
    record["weights"] = {**digest(files), "unused": len(info.get("unexpected_keys", ()))}
    return model, {"hf_dir": record}
