"""Data: record type, readers for real formats, synthetic scenes, tf.data pipeline."""
