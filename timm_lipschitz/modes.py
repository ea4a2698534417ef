"""The one way the package switches a model to eval mode: :func:`eval_mode` hands the model back in the mode it
was given in, so an evaluation in the middle of training (or a certificate computed between two runs) never
leaves BatchNorm frozen or dropout off behind the caller's back. Torch-free at import.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ['eval_mode', 'for_inference']


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
