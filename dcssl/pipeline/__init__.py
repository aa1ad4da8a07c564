"""The DeepCluster loop as a chain of steps: train segment e → cluster e → train segment e+1 → …

Epoch 0's train step is the bootstrap pass (features of the randomly initialised encoder).
Each step is done when its marker exists, so a re-run continues at the first unfinished step.
"""
