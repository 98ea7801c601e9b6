"""The estimator family behind :func:`~histodecon.tl.fit` and :func:`~histodecon.tl.predict`.

What lives here: the network and its loss (``_network``), hyperparameters, the training loop,
:class:`AbundanceRegressor` (``_regressor``), how slides become inputs (``_spots``, ``_inputs``),
the saved-model format (``_file``, ``_schema``, ``_card``) and the Hub (``_hub``), the baselines
and the collapse check, conformal calibration (``_calibration``), applicability (``_applicability``)
and the records a model keeps of its training slides (``_field_match``, ``_stain_match``).

What it may import: the package's shared modules (``histodecon._constants``, ``_settings``,
``_utils``, ...), :mod:`histodecon.encoders`, :mod:`histodecon.metrics`, :mod:`histodecon.pp` and
itself; never the verbs of :mod:`histodecon.tl` nor :mod:`histodecon.tl._embedding`.
"""
