"""Training, evaluation and inference engines (plain functions, after torchvision's reference scripts)."""
