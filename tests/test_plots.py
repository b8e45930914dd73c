"""The axes every learning-curve image shares."""

from matplotlib.figure import Figure

from service.plots import epoch_axes


def test_epoch_ticks_are_whole_epochs():
    # matplotlib's default locator marks 1.25, 1.5, … on a two-epoch run.
    axes = Figure().subplots()
    axes.plot([1, 2], [0.5, 0.4])
    epoch_axes(axes, "loss")
    ticks = [tick for tick in axes.get_xticks() if 1 <= tick <= 2]
    assert ticks == [1, 2]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("epoch", "loss")
