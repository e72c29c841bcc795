"""Triton Python-backend model files (`<name>/model.py`), copied into the model repository."""
