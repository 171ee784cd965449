"""What every figure of a report shares: one colour per method (shades per setting), labels without machine
paths, the run labels, and the file formats figures are written in."""

from __future__ import annotations

import colorsys
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from matplotlib import colors

from bench.report import Run, settings_label, task_label
from core.errors import BenchError

FORMATS = ("png", "pdf", "svg")

# One colour per method in every figure; related methods get distinguishable hues.
METHOD_COLOURS = {
    "ar": "#7f7f7f",
    "pld": "#1f77b4",
    "hf-pld": "#17becf",
    "lookahead": "#2ca02c",
    "jacobi": "#bcbd22",
    "speculative": "#d62728",
    "hf-assisted": "#ff7f0e",
    "hf": "#8c564b",
    "llm2slm": "#9467bd",
}
# Methods not listed above (plugins) hash into these, so a name keeps its colour from report to report.
SPARE_COLOURS = ["#e377c2", "#393b79", "#8c6d31", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d"]

_ABSOLUTE = re.compile(r"(?<![\w.$~-])(?:~|[A-Za-z]:)?[/\\][^\s,;()=]+")


def check_format(fmt: str) -> str:
    """`fmt` when figures can be written in it, else a `BenchError` naming the choices."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def method_colour(method: str) -> str:
    """The method's colour: fixed for the known methods, a stable hash into the spare colours for others."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return SPARE_COLOURS[zlib.crc32(method.encode()) % len(SPARE_COLOURS)]


def shade(colour: str, amount: float) -> str:
    """`colour` darker (amount < 0) or lighter (amount > 0), keeping its hue; amount in [-1, 1]."""
    h, lightness, s = colorsys.rgb_to_hls(*colors.to_rgb(colour))
    target = 1.0 if amount > 0 else 0.0
    return colors.to_hex(colorsys.hls_to_rgb(h, lightness + (target - lightness) * abs(amount), s))


def natural_key(text: str) -> list[object]:
    """Sort key in which "W=2" comes before "W=15"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


class Palette:
    """Colours of (method, brief settings): the method's colour, in shades from dark to light across its settings
    in natural order; built once per report so a setting has the same shade in every figure."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        by_method: dict[str, set[str]] = {}
        for method, brief in pairs:
            by_method.setdefault(method, set()).add(_text(brief))
        self._colours: dict[tuple[str, str], str] = {}
        for method, briefs in by_method.items():
            ordered = sorted(briefs, key=natural_key)
            n = len(ordered)
            for i, brief in enumerate(ordered):
                amount = 0.0 if n == 1 else -0.35 + 0.8 * i / (n - 1)
                self._colours[(method, brief)] = shade(method_colour(method), amount)

    @classmethod
    def of(cls, df: pd.DataFrame, runs: Iterable[Run] = ()) -> Palette:
        """The palette of a report table's rows and its runs."""
        brief = df["brief"] if "brief" in df else df["settings"]
        pairs = list(zip(df["method"], brief, strict=True)) if not df.empty else []
        pairs += [(r.config["method"], settings_label(r.config, brief=True)) for r in runs]
        return cls(pairs)

    def colour(self, method: str, brief: object = "") -> str:
        """The shade of this setting, or the method's own colour for a setting the palette has not seen."""
        return self._colours.get((method, _text(brief)), method_colour(method))


def _text(value: object) -> str:
    """A table cell as text ("" for a missing one)."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def clean(text: object) -> str:
    """A label without machine paths: every absolute path is shortened to its last part."""
    return _ABSOLUTE.sub(lambda m: Path(m.group(0)).name or m.group(0), _text(text))


def join(*parts: object) -> str:
    """The non-empty parts of a label, joined by " · ", machine paths shortened."""
    return " · ".join(clean(p) for p in parts if _text(p).strip())


def row_label(row: pd.Series) -> str:
    """A table row's method and brief settings: "lookahead · W=5 N=3 G=5"."""
    return join(row["method"], row.get("brief", row.get("settings")))


def where(row: pd.Series) -> str:
    """The task, and the category when the row is one."""
    return row["task"] if row["category"] == "all" else f"{row['task']}/{row['category']}"


def run_model(run: Run) -> str:
    return Path(run.config["model"]).name


def run_label(run: Run, baseline: bool = False) -> str:
    """model · method · brief settings · task of a run, or of the AR baseline it holds."""
    if baseline:
        return join(run_model(run), "ar (baseline)", task_label(run.config))
    brief = settings_label(run.config, brief=True)
    return join(run_model(run), run.config["method"], brief, task_label(run.config))
