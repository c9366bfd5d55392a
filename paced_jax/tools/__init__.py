"""Command-line tools: thin absl mains, one per stage."""
