"""The estimator family behind :func:`~histodecon.tl.fit` and :func:`~histodecon.tl.predict`.

What lives here: the network and its loss (``_network``), hyperparameters, the training loop,
:class:`AbundanceRegressor` (``_regressor``), how slides become inputs (``_spots``, ``_inputs``),
the saved-model format (``_file``, ``_schema``, ``_card``) and the Hub (``_hub``), the baselines
and the collapse check, and the patch-field record a model keeps (``_field_match``).

What it may import: the package's shared modules (``histodecon._constants``, ``_settings``,
``_utils``, ``_cost``, ``_geometry``), :mod:`histodecon.metrics` and itself; never the verbs of
:mod:`histodecon.tl` nor :mod:`histodecon.tl._embedding`.
"""
