"""Tests never touch the network: set before anything imports huggingface_hub, datasets or wandb."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
