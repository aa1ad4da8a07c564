"""The one owner of a run's per-epoch files: every module that writes or reads them comes here.

    features/epoch-NNNN/   the feature bank (``features``: BankWriter, open_bank, open_features …)
    labels/epoch-NNNN/     labels, centroids, stats (``labels``: LabelsWriter, read_labels …)
    train/epoch-NNNN.done.json   a train segment's done marker (``trained``)

Each folder is sealed by ``hpc.integrity.seal`` (COMPLETE, written last, with every file's
SHA-256) and checked by the module's ``verify``. Where the folders are is ``dcssl.paths.RunPaths``.
"""
