"""The streaming machinery behind :func:`~histodecon.tl.embed` and :func:`~histodecon.tl.embed_many`.

What lives here: the checks of an embedding request (``_request``), the patch field an encoder
reads (``_patch_field``), the loop that embeds one slide with batches read ahead (``_slide``),
the per-sample record of what the slide looked like (``_slide_record``), the resumable
store (``_store``) and the one writer of embeddings into a table (``_writer``).

What it may import: the package's shared modules (``histodecon._constants``, ``_settings``,
``_utils``, ``_cost``, ``_geometry``), :mod:`histodecon.encoders`, :mod:`histodecon.pp` and
itself; never the verbs of :mod:`histodecon.tl` nor :mod:`histodecon.tl._estimator`.
"""
