"""The data a job moves: inputs localized before it runs, datasets published after it, a triage bundle when it
fails, and the transports (file, HTTP, WebDAV, S3) all three share."""
