"""Training: losses, optimiser, train state, SFT and GRPO steps and loops, checkpoints, metrics."""
