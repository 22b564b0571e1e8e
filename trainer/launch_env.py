"""Stand-in for the trainer's launch_env module (being moved out of trainer/distributed.py on the
trainer branch, same names): bench/ imports the launcher-variable scrubbing from here."""

from trainer.distributed import is_launcher_var, without_launcher_env

__all__ = ["is_launcher_var", "without_launcher_env"]
