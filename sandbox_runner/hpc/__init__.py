"""Workers on HPC nodes: pilot batch jobs that start ``sandbox-runner worker`` inside a Slurm allocation."""
