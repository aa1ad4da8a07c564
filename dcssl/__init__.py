"""dcssl — whole-slide images to a DeepCluster encoder on SLURM."""
