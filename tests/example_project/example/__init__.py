"""The example project's code: what each task of its jobs does."""
