"""Learning curves (train loss and the validation metric per epoch) as a PNG, drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

from training.loop import EpochStats


def plot_learning_curves(history: list[EpochStats], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [stats.epoch for stats in history]
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [stats.train_loss for stats in history], marker="o")
    ranking = any(stats.valid_ndcg is not None for stats in history)
    loss_axis.set(title="train loss (listwise)" if ranking else "train loss (BCE)", xlabel="epoch")
    values = [stats.valid_ndcg if ranking else stats.valid_auc for stats in history]
    auc_axis.plot(epochs, values, marker="o", color="tab:orange")
    auc_axis.set(title="valid NDCG@10" if ranking else "valid AUC", xlabel="epoch")
    for axis in (loss_axis, auc_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_evaluation(metrics: dict, path: Path) -> Path:
    """NDCG@10 of every method for all, warm and cold users (with the pipeline's interval against the best
    baseline), and recall's coverage of the test likes per channel, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    segments = [s for s in ("all", "warm", "cold") if s in metrics]
    methods = list(metrics[segments[0]])
    figure, (ndcg_axis, coverage_axis) = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [metrics[segment][method]["ndcg@10"] for segment in segments]
        ndcg_axis.bar(np.arange(len(segments)) + i * width, values, width, label=method)
    ndcg_axis.set_xticks(np.arange(len(segments)) + 0.4 - width / 2, [f"{s} users" for s in segments])
    ndcg_axis.set(title="test NDCG@10", ylabel="NDCG@10")
    ndcg_axis.legend(fontsize="small")
    coverage = metrics.get("coverage", {})
    for i, segment in enumerate(s for s in ("all", "warm") if s in coverage):
        channels = [c for c in coverage[segment] if c != "union"] + ["union"]
        coverage_axis.barh(
            np.arange(len(channels)) + i * 0.4, [coverage[segment][c] for c in channels], 0.4, label=segment
        )
        coverage_axis.set_yticks(np.arange(len(channels)) + 0.2, channels)
    coverage_axis.set(title="share of test likes among recall's candidates", xlabel="coverage")
    coverage_axis.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
