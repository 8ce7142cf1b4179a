"""prunetune — AutoML search in which neural-network pruning is the hyperparameter space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunetune.search.registry import FetchedModel

__version__ = "0.1.0"


def fetch(uri: str, **kwargs: Any) -> FetchedModel:
    """Fetch a registered pruned model (``"NAME@ALIAS"`` or ``"NAME/VERSION"``).

    Returns a :class:`~prunetune.search.registry.FetchedModel`: ``.model`` takes raw inputs
    (``.inputs`` gives their shape, dtype and range; the data set's standardisation is part of
    the model) and supports ``.eval()`` and ``.to(device)``; ``.card`` holds the recorded
    metrics and config. Keyword arguments go to :func:`prunetune.search.registry.fetch`
    (``tracking_uri``).

    Example:
        >>> import prunetune
        >>> got = prunetune.fetch("quickstart@knee")          # doctest: +SKIP
        >>> logits = got.model(got.random_inputs(4))          # doctest: +SKIP
    """
    from prunetune.search.registry import fetch as _fetch

    return _fetch(uri, **kwargs)


__all__ = ["__version__", "fetch"]
