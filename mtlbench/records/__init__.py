"""Run records: the Parquet schema (one module) and the results store."""
