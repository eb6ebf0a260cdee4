"""Commands and a summariser that reproduce the paper's tables and figures (see README.md here)."""
