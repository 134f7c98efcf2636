"""Training of UMS-Rep models on the project's phantoms: resumable runs of both stages
(`runs`), the comparison of fine-tuning strategies (`compare`) and the demo bundles (`demo`)."""
