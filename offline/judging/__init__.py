"""The judges offline: `escalon judge report` / `escalon judge live`, their metrics, and calibration fitting."""
