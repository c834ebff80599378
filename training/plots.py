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
