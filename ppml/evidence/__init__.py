"""The evidence pack: a signed hash DAG over every artifact in a model version's lineage (``pack``), its
verification (``verify``) and the Ed25519 key handling (``signing``). No Dagster imports: the thin layer in
``ppml_assets/evidence.py`` walks the asset graph and hands the nodes over."""
