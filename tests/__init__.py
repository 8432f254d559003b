"""ppml tests (a regular package, so that a stray site-packages `tests` package cannot shadow it)."""
