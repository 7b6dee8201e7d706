"""Datasets a job produced: recognized by datasets.json, published atomically (file://, s3://, WebDAV)."""
