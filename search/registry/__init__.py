"""Model registry: register a study's chosen trials, set aliases, fetch ``NAME@ALIAS``.

:func:`register_study` turns trials selected from the study's Pareto front into versions of
the registered model named after the study, with aliases ``knee``, ``smallest`` (fewest params
with val accuracy ≥ the spec's floor) and ``most-accurate``. Each version carries

* ``extra_files/weights.pt`` — the compact state dict (``torch.load(weights_only=True)``),
  ``extra_files/arch.json`` (rebuilds the module from plain ``torch.nn`` layers),
  ``extra_files/kept_units.json`` and ``extra_files/card.json`` (metrics, config, provenance);
* the MLflow pytorch flavour (``pt2``: a ``torch.export`` program, no pickle) with a signature
  and an input example, so ``mlflow.pytorch.load_model("models:/NAME@ALIAS")`` works;
* tags ``params``, ``params_dense``, ``val_accuracy``, ``test_accuracy``, ``method``,
  ``trial``, ``trial_run_id``, ``selected_as``, ``logged_model_id`` and a description with
  the numbers.

:func:`fetch` rebuilds the model from ``arch.json`` + ``weights.pt`` and never unpickles
project code. Every MLflow call goes through a client bound to the given tracking URI; the
process's global MLflow URIs and environment are left alone.

Modules by job: ``_select`` (which trials the rules choose), ``_register`` (versions, aliases,
descriptions), ``_card`` (``card.json`` and ``MODEL_CARD.md``), ``_fetch`` (resolve, download,
rebuild, list).

Example:
    >>> from prunetune.search.registry import fetch, register_study
    >>> register_study("sqlite:////abs/mlflow.db", "quickstart")            # doctest: +SKIP
    >>> model = fetch("quickstart@knee", tracking_uri="sqlite:////abs/mlflow.db")  # doctest: +SKIP
"""

from prunetune.search.registry._fetch import (
    MODEL_FILES,
    FetchedModel,
    fetch,
    fetch_to,
    list_models,
    load_compact,
    parse_model_uri,
    resolve_version,
)
from prunetune.search.registry._register import RegisteredVersion, register_study
from prunetune.search.registry._select import ALIAS_RULES, DEFAULT_SELECT

__all__ = [
    "ALIAS_RULES",
    "DEFAULT_SELECT",
    "MODEL_FILES",
    "FetchedModel",
    "RegisteredVersion",
    "fetch",
    "fetch_to",
    "list_models",
    "load_compact",
    "parse_model_uri",
    "register_study",
    "resolve_version",
]
