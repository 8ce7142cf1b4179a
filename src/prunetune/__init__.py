"""prunetune — AutoML search in which neural-network pruning is the hyperparameter space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def fetch(uri: str, **kwargs: Any) -> nn.Module:
    """Fetch a registered pruned model (``"NAME@ALIAS"`` or ``"NAME/VERSION"``) as a module.

    The module takes raw inputs (the data set's standardisation is part of it) and supports
    ``.eval()`` and ``.to(device)``; ``.inputs`` gives the expected shape, dtype and range and
    ``.card`` the recorded metrics and config. Keyword arguments go to
    :func:`prunetune.search.registry.fetch` (``tracking_uri``), which returns the full
    :class:`~prunetune.search.registry.FetchedModel` record.

    Example:
        >>> import prunetune
        >>> model = prunetune.fetch("quickstart@knee").eval()        # doctest: +SKIP
        >>> logits = model(torch.rand(4, *model.inputs["shape"]))    # doctest: +SKIP
    """
    from prunetune.search.registry import fetch as _fetch

    got = _fetch(uri, **kwargs)
    model = got.model
    model.inputs = dict(got.inputs)
    model.card = dict(got.card)
    return model


__all__ = ["__version__", "fetch"]
