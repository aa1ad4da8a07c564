"""hpc — cluster plumbing that knows nothing of slides or DeepCluster.

env: who am I (rank, nodes) · distributed: torch process groups · mpi: shards and collectives ·
checkpoint: atomic files · preemption: signal → checkpoint → requeue · submit: executors ·
config: YAML → validated dataclasses.
"""
