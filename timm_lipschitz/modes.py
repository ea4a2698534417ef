"""The one way the package switches a model to eval mode: :func:`eval_mode` hands the model back in the mode it
was given in, so an evaluation in the middle of training (or a certificate computed between two runs) never
leaves BatchNorm frozen or dropout off behind the caller's back. Torch-free at import.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ['eval_mode']


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """BatchNorm and dropout in eval mode for the block; the model's own mode afterwards (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
