"""`connector serve`'s HTTP side: the API (`app`), its auth (`auth`), and what the
process knows about its running syncs and metrics (`live`)."""
