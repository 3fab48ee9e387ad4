"""Storage room: Arrow schemas and the Parquet reader and writer. No torch, no pandas."""
