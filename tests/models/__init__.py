"""Test-only models and NumPy references of the bundled models' algorithms."""
