"""The compression table (`make reproduce-quant-cpu`): weight-only quantization next to decoding methods and llama.cpp,
from a report's summary.csv (`bench report results/quant/runs --out results/quant`).

    python scripts/quant_table.py results/quant/summary.csv --out results/quant

Writes table.md (five sections: quantization at batch 1 with quality, batch sweep, context sweep, quantization
under speculation, llama.cpp) and two figures: decode speedup against batch size per scheme, and speed against
quality. Every speedup is against our full-precision AR loop in the same run, interleaved, at the same batch size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

SCHEMES = ("none", "int8-wo", "int4-wo", "int8-dyn")
SCHEME_COLOURS = {"none": "#444444", "int8-wo": "#1f77b4", "int4-wo": "#d62728", "int8-dyn": "#2ca02c"}


def settings(text: object) -> dict[str, str]:
    return dict(word.split("=", 1) for word in str(text).split() if "=" in word) if isinstance(text, str) else {}


def load(summary: Path) -> pd.DataFrame:
    """The report's overall rows (no per-category rows), with scheme, batch and task kind parsed out."""
    df = pd.read_csv(summary)
    df = df[df["category"] == "all"].copy()
    parsed = df["settings"].map(settings)
    df["scheme"] = parsed.map(lambda s: s.get("quant", "none"))
    df["draft_scheme"] = parsed.map(lambda s: s.get("draft_quant", "none"))
    df["batch"] = parsed.map(lambda s: int(s.get("batch", 1)))
    df["kind"] = df["task"].str.split(":").str[0]
    df["prompt_len"] = df["task"].str.extract(r"prompt_tokens=(\d+)")[0].astype(float)
    df["model_mb"] = df["model_bytes"] / 2**20 if "model_bytes" in df else None
    return df


def _fmt(value: object, spec: str = ".2f") -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def _speedup(row: pd.Series) -> str:
    if pd.isna(row.get("speedup")):
        return ""
    return f"{row['speedup']:.2f}x [{row['speedup_ci_low']:.2f}, {row['speedup_ci_high']:.2f}]"


def _delta(row: pd.Series, name: str, spec: str = ".2f") -> str:
    value, delta = row.get(name), row.get(f"{name}_delta")
    if value is None or pd.isna(value):
        return ""
    return f"{value:{spec}}" + (f" ({delta:+{spec}})" if delta is not None and not pd.isna(delta) else "")


def _markdown(rows: list[dict[str, str]]) -> str:
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(no runs)"


def quality_section(df: pd.DataFrame) -> str:
    """Quantized AR (and the full-precision AR it is measured against) on WMT: speed, memory, quality."""
    rows = []
    ar = df[(df["kind"] == "wmt") & (df["method"] == "ar")].sort_values(["model", "dtype", "scheme"])
    for _, r in ar.iterrows():
        rows.append({"model": r["model"], "dtype": r["dtype"], "scheme": r["scheme"],
                     "model MB": _fmt(r["model_mb"], ".0f"),
                     "peak RSS MB": _fmt(r.get("peak_rss_mb"), ".0f"), "prefill ms": _fmt(r["ttft_ms_median"], ".1f"),
                     "decode ms/token": _fmt(r["tpot_ms_median"], ".1f"), "e2e ms": _fmt(r.get("e2e_ms_median"), ".0f"),
                     "tok/s": _fmt(r["tokens_per_s"]), "speedup": _speedup(r), "exact": _fmt(r.get("exact_rate")),
                     "BLEU (delta)": _delta(r, "bleu"), "chrF (delta)": _delta(r, "chrf"),
                     "perplexity (delta)": _delta(r, "perplexity", ".3f")})  # fmt: skip
    return _markdown(rows)


def batch_section(df: pd.DataFrame) -> str:
    """Tokens/s and speedup over full precision per batch size (synthetic prompts of 128 tokens)."""
    sub = df[(df["kind"] == "synthetic") & (df["prompt_len"] == 128) & (df["method"] == "ar")]
    rows = []
    for (model, dtype, scheme), g in sub.groupby(["model", "dtype", "scheme"], sort=True):
        row = {"model": model, "dtype": dtype, "scheme": scheme}
        for _, r in g.sort_values("batch").iterrows():
            row[f"b{r['batch']} tok/s"] = _fmt(r["tokens_per_s"], ".1f")
            row[f"b{r['batch']} decode speedup"] = _fmt(r.get("speedup_decode"))
        rows.append(row)
    return _markdown(rows)


def context_section(df: pd.DataFrame) -> str:
    """Prefill and decode latency per prompt length at batch 1 (synthetic prompts)."""
    sub = df[(df["kind"] == "synthetic") & (df["batch"] == 1) & (df["method"] == "ar")]
    rows = []
    for _, r in sub.sort_values(["model", "dtype", "scheme", "prompt_len"]).iterrows():
        rows.append({"model": r["model"], "dtype": r["dtype"], "scheme": r["scheme"],
                     "prompt tokens": int(r["prompt_len"]), "prefill ms": _fmt(r["ttft_ms_median"], ".0f"),
                     "decode ms/token": _fmt(r["tpot_ms_median"], ".1f"),
                     "e2e ms": _fmt(r.get("e2e_ms_median"), ".0f"), "speedup": _speedup(r)})  # fmt: skip
    return _markdown(rows)


def speculation_section(df: pd.DataFrame) -> str:
    """Decoding methods on a quantized target or draft (Spec-Bench mix): does quantization compose?"""
    sub = df[(df["kind"] == "specbench") & ~df["method"].str.startswith("llamacpp")]
    rows = []
    for _, r in sub.sort_values(["model", "dtype", "method", "scheme", "draft_scheme"]).iterrows():
        rows.append({"model": r["model"], "dtype": r["dtype"], "method": r["method"], "target": r["scheme"],
                     "draft": f"{r['draft']} {r['draft_scheme']}" if isinstance(r.get("draft"), str) else "",
                     "tau": _fmt(r["tau"]), "accept": _fmt(r.get("acceptance_rate")), "tok/s": _fmt(r["tokens_per_s"]),
                     "speedup": _speedup(r), "exact": _fmt(r.get("exact_rate"))})  # fmt: skip
    return _markdown(rows)


def llamacpp_section(df: pd.DataFrame) -> str:
    """llama.cpp on the same GGUF against our full-precision AR loop (same run, same prompts)."""
    sub = df[df["method"].str.startswith("llamacpp")]
    rows = []
    for _, r in sub.sort_values(["model", "kind", "method", "settings"]).iterrows():
        rows.append({"model": r["model"], "task": r["task"], "ours": r["dtype"], "method": r["method"],
                     "settings": r["settings"], "tok/s": _fmt(r["tokens_per_s"]),
                     "our AR tok/s": _fmt(r.get("baseline_tokens_per_s")), "speedup over our AR": _speedup(r),
                     "prefill ms": _fmt(r["ttft_ms_median"], ".1f"),
                     "decode ms/token": _fmt(r["tpot_ms_median"], ".1f"), "same text": _fmt(r.get("exact_rate")),
                     "BLEU (delta)": _delta(r, "bleu")})  # fmt: skip
    return _markdown(rows)


def plot_batches(df: pd.DataFrame, out: Path) -> Path:
    """Decode speedup over full precision against batch size, one line per scheme, one panel per model."""
    sub = df[
        (df["kind"] == "synthetic") & (df["prompt_len"] == 128) & (df["method"] == "ar") & (df["scheme"] != "none")
    ]
    models = sorted(sub["model"].unique())
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5.5 * max(len(models), 1), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        for (dtype, scheme), g in sub[sub["model"] == model].groupby(["dtype", "scheme"]):
            g = g.sort_values("batch")
            ax.plot(g["batch"], g["speedup_decode"], marker="o", color=SCHEME_COLOURS.get(scheme),
                    ls="-" if dtype == "bfloat16" else "--", label=f"{scheme} (from {dtype})")  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 16], ["1", "4", "16"])
        ax.set(title=model, xlabel="batch size", ylabel="decode speedup over full precision, same batch")
        ax.legend(fontsize=8)
    fig.suptitle("Weight-only quantization: decode speed-up by batch size (CPU, 128-token prompts)")
    fig.tight_layout()
    path = out / "batch_speedup.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_speed_quality(df: pd.DataFrame, out: Path) -> Path:
    """Speedup against the BLEU change on WMT (batch 1), every quantized AR and llama.cpp row."""
    sub = df[(df["kind"] == "wmt") & df["speedup"].notna() & df["bleu_delta"].notna()]
    fig, ax = plt.subplots(figsize=(8.5, 5))
    markers = {m: k for m, k in zip(sorted(df["model"].unique()), "os^D", strict=False)}
    for _, r in sub.iterrows():
        colour = SCHEME_COLOURS.get(r["scheme"], "#9467bd") if r["method"] == "ar" else "#ff7f0e"
        label = r["scheme"] if r["method"] == "ar" else f"{r['method']} {settings(r['settings']).get('gguf', '')}"
        ax.scatter(r["speedup"], r["bleu_delta"], color=colour, marker=markers[r["model"]], s=50)
        ax.annotate(f"{label} ({r['model']}, {r['dtype']})", (r["speedup"], r["bleu_delta"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlim(0.8, sub["speedup"].max() * 1.45 if len(sub) else 2)  # room for the labels
    ax.set(xlabel="speedup over our full-precision AR (same run)", ylabel="BLEU change (newstest2014 de-en, 50 lines)",
           title="Speed against quality: quantized AR and llama.cpp (CPU, batch 1)")  # fmt: skip
    fig.tight_layout()
    path = out / "speed_quality.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


INTRO = """Written by `make reproduce-quant-cpu` (scripts/quant_table.py) from summary.csv; the machine, versions and
commit of each row are there. 2-core AMD EPYC, torch 2.13 CPU, torchao 0.18, llama-cpp-python 0.3.36, 2 threads.
Every speedup is against our full-precision AR loop in the same run (interleaved, same prompts, same batch size),
with its 95% bootstrap interval. "exact": share of outputs equal to full-precision AR, token for token (llama.cpp:
the same text). Prefill = time to first token, decode = time per later token (medians), e2e = median request."""

SECTIONS = (
    ("Quantized AR at batch 1: speed, memory and quality (WMT de-en, newstest2014)", quality_section),
    ("Batch sweep (synthetic 128-token prompts)", batch_section),
    ("Context sweep (synthetic prompts, batch 1)", context_section),
    ("Quantization under speculation (Spec-Bench mix)", speculation_section),
    ("llama.cpp on the same GGUF", llamacpp_section),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    df = load(args.summary)
    parts = ["# Compression table (CPU)", "", INTRO, ""]
    for title, section in SECTIONS:
        parts += [f"## {title}", "", (section.__doc__ or "").strip(), "", section(df), ""]
    (args.out / "table.md").write_text("\n".join(parts))
    for path in (plot_batches(df, args.out), plot_speed_quality(df, args.out)):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'table.md'}")


if __name__ == "__main__":
    main()
