"""prunetune — AutoML search in which neural-network pruning is the hyperparameter space."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def fetch(uri: str, **kwargs: Any) -> Any:
    """Fetch a registered pruned model (``"NAME@ALIAS"``) as a plain ``torch.nn.Module``."""
    from prunetune.search.registry import fetch as _fetch

    return _fetch(uri, **kwargs)


__all__ = ["__version__", "fetch"]
