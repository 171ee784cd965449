"""Plot the train and held-out loss curves of `bench train` checkpoints (their history.csv) into one PNG.

python scripts/plot_loss.py ckpt/llm2slm-qwen05-smollm2 ckpt/slm-smollm2 ckpt/lora-qwen05 --out results/llm2slm/loss.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(8, 5))
    for folder in args.checkpoints:
        history = pd.read_csv(folder / "history.csv")
        train = history.dropna(subset=["train_loss"])
        evals = history.dropna(subset=["eval_loss"])
        line = ax.plot(train["step"], train["train_loss"].rolling(10, min_periods=1).mean(), alpha=0.5, lw=1)[0]
        label = f"{folder.name} (held out)"
        ax.plot(evals["step"], evals["eval_loss"], marker="o", color=line.get_color(), label=label)
        points = zip(evals["step"], evals["eval_loss"], strict=True)
        print(f"{folder.name}: " + ", ".join(f"{int(s)}: {v:.3f}" for s, v in points))
    ax.set_xlabel("optimizer step (batch 8)")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title("training loss (thin: train, 10-step mean; dots: held-out training-split lines)")
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
