"""A third party adds a method from its own package through an entry point, with no edit to decodebench: the
method is one file (options + drafter), and shows up in `bench list methods`, `bench run --help`, runs, sweeps
and reports."""

from __future__ import annotations

import json
import sys
import textwrap

import pandas as pd
import pytest

from core.errors import BenchError
from methods.base import METHODS
from tests.test_cli import bench

PLUGIN = '''
"""`repeat`: proposes the context's last tokens again (a drafting method in one file)."""

from dataclasses import dataclass

from core.options import Options, option
from methods.base import DraftingMethod
from methods.decode import Draft


@dataclass(frozen=True)
class RepeatOptions(Options):
    span: int = option(2, "tokens proposed per step", min=1)


class RepeatDrafter:
    draft_forwards = 0

    def __init__(self, span: int) -> None:
        self.span = span

    def propose(self, context: list[int], budget: int) -> Draft | None:
        return Draft.chain(context[-self.span :][:budget]) if budget > 0 else None

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        pass


class Repeat(DraftingMethod):
    name = "repeat"
    description = "proposes the last tokens again (a test plugin)"
    Options = RepeatOptions

    def drafter(self) -> RepeatDrafter:
        return RepeatDrafter(self.options.span)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A throwaway installed distribution `dbplugin` whose entry point names its method class."""
    site = tmp_path / "site"
    (site / "dbplugin").mkdir(parents=True)
    (site / "dbplugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "dbplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dbplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[decodebench.methods]\nrepeat = dbplugin:Repeat\n")
    METHODS.load()  # the built-in methods first
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(METHODS, "_loaded", False)  # so the next lookup reads the entry points again
    yield
    METHODS._items.pop("repeat", None)
    sys.modules.pop("dbplugin", None)


def test_entry_point_registers_the_method(plugin):
    assert METHODS.get("repeat").__module__ == "dbplugin" and METHODS.get("pld").name == "pld"
    with pytest.raises(BenchError, match="method 'repeat' is registered twice: dbplugin.Repeat and .*Impostor"):
        METHODS.register(type("Impostor", (), {"name": "repeat"}))


def test_plugin_method_everywhere(plugin, monkeypatch, capsys, tiny_dir, data_dir, tmp_path):
    code, out, _ = bench(monkeypatch, capsys, "list", "methods")
    assert code == 0 and "repeat" in out and "--span 2" in out
    code, out, _ = bench(monkeypatch, capsys, "run", "--help")
    assert code == 0 and "--span" in out and "Method options: repeat" in out
    common = ["--model", str(tiny_dir), "--data-dir", str(data_dir), "--turns", "1", "--warmup", "0"]
    run = tmp_path / "run"
    args = ["run", "-m", "repeat", "-t", "mtbench", "--span", "3", "--limit", "2", "--max-new-tokens", "10"]
    code, out, err = bench(monkeypatch, capsys, *args, *common, "--out", str(run))
    assert code == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["options"] == {"span": 3}
    records = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert all(r["exact"] for r in records if r["role"] == "method")  # lossless: equal to AR greedy
    sweep = tmp_path / "sweep.yaml"
    config = {"models": [str(tiny_dir)], "data_dir": str(data_dir), "limit": 1, "turns": 1, "warmup": 0,
              "max_new_tokens": 8, "tasks": ["mtbench"]}  # fmt: skip
    config["methods"] = [{"method": "repeat", "grid": {"span": [1, 4]}}]
    sweep.write_text(json.dumps(config))
    code, out, err = bench(monkeypatch, capsys, "sweep", str(sweep), "--out", str(tmp_path / "s"))
    assert code == 0, err
    table = pd.read_csv(tmp_path / "s" / "report" / "summary.csv")
    assert set(table[table["method"] == "repeat"]["settings"]) == {"span=1", "span=4"}
    config["methods"] = [{"method": "repeat", "settings": [{"span": 0}]}]
    sweep.write_text(json.dumps(config))
    code, _, err = bench(monkeypatch, capsys, "sweep", str(sweep), "--out", str(tmp_path / "s2"))
    assert code == 2 and "--span must be at least 1 (got 0)" in err
