"""The engine: process setup, the training loop, checkpoints, evaluation, logging, export."""
