"""DICOM pixels to model arrays and back, with the geometry kept."""
