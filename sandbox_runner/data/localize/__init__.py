"""Localizing a job's inputs (``localize_urls``) into its dir, through the shared verified cache under the work root."""
