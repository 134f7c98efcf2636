"""Training of UMS-Rep bundles from the project's phantoms."""
