"""Starling: a Kubernetes-native, multi-stage movie recommender."""

__version__ = "0.1.0"
