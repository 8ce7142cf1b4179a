"""Model registry: register a study's chosen trials, set aliases, fetch ``NAME@ALIAS``.

:func:`register_study` turns trials selected from the study's Pareto front into versions of
the registered model named after the study, with aliases ``knee``, ``smallest`` (fewest params
with val accuracy ≥ the spec's floor) and ``most-accurate``. Each version carries, in
``extra_files/``,

* ``model.pt2`` — a ``torch.export`` program (eval mode, dynamic batch) of the data set's
  standardisation followed by the compact model: it takes raw inputs (``input.json``: shape,
  dtype, range, mean, std) and loads with plain torch, ``torch.export.load(p).module()``;
* ``weights.safetensors`` + ``masks.safetensors`` (the masked dense model, masks baked in:
  the re-trainable form), ``kept_units.json``, ``input.json``, ``config.json`` (the trial's
  config) and ``card.json`` (metrics, config, inputs, provenance);

and also the MLflow pytorch flavour (``pt2``, the same model) with a signature and an input
example, so ``mlflow.pytorch.load_model("models:/NAME@ALIAS")`` works; tags ``params``,
``params_dense``, ``val_accuracy``, ``test_accuracy``, ``method``, ``trial``,
``trial_run_id``, ``selected_as``, ``logged_model_id`` and a description with the numbers.
Versions registered before ``model.pt2`` (``arch.json`` + ``weights.pt``) still fetch.

:func:`fetch` returns a :class:`FetchedModel` whose ``.model`` is a
:class:`~prunetune.prune.deliver.DeliveredModel` (``model.pt2``; ``.eval()``/``.to(device)``
work); :func:`fetch_to` also writes the files, :func:`write_onnx` adds ``model.onnx``. Nothing
unpickles project code. Every MLflow call goes through a client bound to the given tracking
URI; the process's global MLflow URIs and environment are left alone.

Modules by job: ``_select`` (which trials the rules choose), ``_register`` (versions, aliases,
descriptions), ``_card`` (``card.json`` and ``MODEL_CARD.md``), ``_fetch`` (resolve, download,
load, ONNX, list).

Example:
    >>> from prunetune.search.registry import fetch, register_study
    >>> register_study("sqlite:////abs/mlflow.db", "quickstart")            # doctest: +SKIP
    >>> got = fetch("quickstart@knee", tracking_uri="sqlite:////abs/mlflow.db")  # doctest: +SKIP
    >>> logits = got.model(got.random_inputs(4))  # raw inputs in [0, 1]       # doctest: +SKIP
"""

from prunetune.search.registry._fetch import (
    LEGACY_FILES,
    MODEL_FILES,
    FetchedModel,
    compact_module,
    fetch,
    fetch_to,
    list_models,
    load_compact,
    parse_model_uri,
    resolve_version,
    write_onnx,
)
from prunetune.search.registry._register import RegisteredVersion, register_study
from prunetune.search.registry._select import ALIAS_RULES, DEFAULT_SELECT

__all__ = [
    "ALIAS_RULES",
    "DEFAULT_SELECT",
    "LEGACY_FILES",
    "MODEL_FILES",
    "FetchedModel",
    "RegisteredVersion",
    "compact_module",
    "fetch",
    "fetch_to",
    "list_models",
    "load_compact",
    "parse_model_uri",
    "register_study",
    "resolve_version",
    "write_onnx",
]
