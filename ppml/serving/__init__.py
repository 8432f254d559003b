"""Lifecycle step 7c: serving the ``production`` model version with the training pipeline's privacy measures.

The model was trained on generalized quasi-identifiers and binned features; a service that fed it raw values
would score inputs it never saw. :mod:`ppml.serving.spec` records, at training time, exactly how a raw record
becomes the model's input (the released hierarchy levels, the release-safety bins, the preparation bins, the
one-hot feature names) and replays it per request. :mod:`ppml.serving.app` is the HTTP service (FastAPI) with
authentication, per-client query budgets, rate limits, output coarsening and a prediction log holding
pseudonymous request ids only. Nothing here imports Dagster.
"""
