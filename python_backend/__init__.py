"""The routed index library, the Triton server launcher and the Python-backend models."""
