"""Command-line tools: model_stats (parameters, FLOPs), bench (step speed, MFU)."""
