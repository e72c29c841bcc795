"""Offline side: data sets, training, export, prototypes, index building, publishing."""
