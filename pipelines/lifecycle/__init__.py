"""Flows across training and the registry: train and register (first champion), and the one retrain path."""
