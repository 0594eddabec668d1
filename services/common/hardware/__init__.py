"""What the machine has: CPU features, GPUs. Torch-free."""
