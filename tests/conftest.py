"""Tests never touch the network: Hugging Face libraries run offline (set before they are imported)."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """What every plot drew, by file name: its title, axis labels, and each line's label and data. Tests check the
    content of a figure, not the size of its PNG."""
    from timm_lipschitz.robustness import report
    figures = {}
    real = report.save_figure

    def capture(fig, ax, path, *args, **kwargs):
        out = real(fig, ax, path, *args, **kwargs)
        figures[Path(path).name] = {
            'title': ax.get_title(), 'xlabel': ax.get_xlabel(), 'ylabel': ax.get_ylabel(),
            'lines': {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()},
            'bands': len(ax.collections), 'png': Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n',
            'images': [im.get_array().tolist() for im in ax.images],
            'yticks': [t.get_text() for t in ax.get_yticklabels()],
            'bars': {c.get_label(): [p.get_height() for p in c] for c in ax.containers}}
        return out
    monkeypatch.setattr(report, 'save_figure', capture)
    return figures


def _signals_at_defaults() -> None:
    """In a child about to exec: the stop signals at their defaults. A test suite run as a background job
    (``nohup pytest &``) inherits SIGINT and SIGQUIT ignored, and a program rightly keeps an inherited SIG_IGN; a test
    that sends a signal must not depend on how it was started."""
    import signal
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.fixture
def signals_at_defaults():
    """``preexec_fn`` for a child a test sends signals to (:func:`_signals_at_defaults`)."""
    return _signals_at_defaults
