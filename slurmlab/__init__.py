"""slurmlab: a real Slurm cluster on one machine, for any project's job files.

The ``slurmlab`` command (``slurmlab.cli``) creates a cluster for the project you stand in, with
the project mounted at its own path on every container and its Python dependencies installed in
the cluster's environment. See README.md, "Use it in your project".
"""

__version__ = "0.1.0"
