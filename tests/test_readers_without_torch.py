"""The read side runs where torch and the model packages cannot be imported: a fresh interpreter
whose import system refuses them opens a store of the previous release, renders both reports,
exports, compares, and prints the tables and the retrieval summary (tests/test_layering.py checks
the same from the source; this checks it by running)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE_V2 = ROOT / "tests" / "data" / "store_v2.db"

SCRIPT = textwrap.dedent('''
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = ("torch", "torchvision", "timm", "transformers", "architectures",
               "feature_extractors")

    class Refuse(MetaPathFinder):
        """Any import of a blocked package fails as if it were not installed (unlike
        sys.modules[name] = None, which breaks scipy's own optional torch probe)."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())

    import json
    from pathlib import Path

    import vlbench.compare
    import vlbench.export
    import vlbench.gate
    import vlbench.report.html
    import vlbench.table
    from vlbench.export import export_json
    from vlbench.gate import compare_refs, format_table
    from vlbench.report import render_markdown, write_report
    from vlbench.retrieval_cost import retrieval_summary
    from vlbench.rounds import pool_rounds
    from vlbench.store import Store
    from vlbench.table import results_table

    db, out = Path(sys.argv[1]), Path(sys.argv[2])
    with Store.open(db) as store:  # migrates the old store
        runs = store.run_ids()
        html = write_report(store, runs, out=out / "r.html").read_text()
        markdown = render_markdown(store, runs)
        exported = json.dumps(export_json(store, runs))
        table = results_table(pool_rounds(store.cases(3)))
        summary = retrieval_summary(store.cases(2))
        cmp = compare_refs(["3", "3"], store, threshold=0.1, alpha=0.01, run_noise=None)
        compared = format_table(cmp, cmp.exit_status())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"html": html, "markdown": markdown, "export": exported, "table": table,
                      "summary": summary, "compare": compared, "loaded": loaded}))
''')


def test_reports_export_and_compare_without_torch(tmp_path: Path) -> None:
    db = tmp_path / "v2.sqlite"
    shutil.copyfile(STORE_V2, db)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(db), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    for model in ("vilt-b32-tiny", "uniter-base-tiny", "clip-vit-b32-tiny", "vilt-b32",
                  "pixelbert-r50", "uniter-base"):
        assert model in out["html"] and model in out["markdown"] and model in out["export"]
    assert "canonical input not recorded" in out["html"]
    assert "Retrieval cost" in out["html"] and "### Retrieval cost" in out["markdown"]
    assert "uniter-base" in out["table"] and "visual.nms" in out["compare"]
    assert "crossovers" in out["summary"] and "clip-vit-b32-tiny" in out["summary"]
