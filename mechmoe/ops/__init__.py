"""Measurements and interventions on the common interface: typed, composable, xarray out."""
