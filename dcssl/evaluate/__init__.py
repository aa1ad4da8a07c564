"""Proving the encoder: k-NN / linear probe against random init, export, embeddings, curation.

Modules: ``config`` (EvalConfig, EmbedConfig, CurateConfig), ``labelled`` (labelled sets, .npz
ingest), ``knn``, ``linear``, ``features``, ``encoder``, ``run`` (evaluate), ``export``,
``embed``, ``curate``. The launcher's ``eval``, ``export``, ``embed`` and ``curate`` subcommands
call them.
"""
