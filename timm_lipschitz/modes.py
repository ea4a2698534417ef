"""The one way the package switches a model to eval mode: :func:`eval_mode` hands the model back in the mode it
was given in, so an evaluation in the middle of training (or a certificate computed between two runs) never
leaves BatchNorm frozen or dropout off behind the caller's back. Torch-free at import.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ['eval_mode', 'for_inference', 'for_evaluation']


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """BatchNorm and dropout in eval mode for the block; the model's own mode afterwards (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def for_inference(model: Any) -> Any:
    """Eval mode for good: only for a model handed out to be used for inference and never trained here (a
    RobustBench entry point returns one, as RobustBench's own zoo models are)."""
    model.eval()
    return model


def for_evaluation(model: Any) -> Any:
    """The model an evaluation runs: the plain export of a model that offers one (``to_plain()``: the 1-Lipschitz
    nets, whose constrained weights are then computed once instead of at every forward; the same outputs), else the
    model itself. The model the caller holds is never switched into a cached mode, so training it stays exact."""
    export = getattr(model, 'to_plain', None)
    return export() if callable(export) else model
